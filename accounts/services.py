"""Domain functions about agents."""

from __future__ import annotations

from django.db.models import Q

from accounts.models import Agent
from ctihub.lib.phones import e164_or_empty


def agent_for_local_party(account_id: int, local_party: dict[str, str]) -> Agent | None:
    """The agent a PBX means when it names a party by user id, email or number (Telepo)."""
    from telephony.models import Terminal

    user_id = (local_party.get("user_id") or "").strip()
    email = (local_party.get("email") or "").strip()
    number = (local_party.get("number") or "").strip()
    terminals = Terminal.objects.filter(account_id=account_id, agent__isnull=False)
    if user_id:
        terminal = terminals.filter(pbx_id__iexact=user_id).first()
        if terminal:
            return terminal.agent
    if email:
        agent = Agent.objects.filter(user__email__iexact=email).first()
        if agent:
            return agent
    if number:
        e164 = e164_or_empty(number)
        match = Q(extension=number)
        if e164:
            match |= Q(pstn_numbers__contains=[e164])
        terminal = terminals.filter(match).first()
        if terminal:
            return terminal.agent
    return None


class NotAnAgent(PermissionError):
    """The user has no agent profile: an admin must create one."""


def agent_of(user) -> Agent | None:
    if not user.is_authenticated:
        return None
    return Agent.objects.filter(user=user).first()


def set_agent_status(agent: Agent, status: str, source: str = "console") -> Agent:
    """Store the status and tell the agent's consoles and the supervisors, after commit."""
    from django.db import transaction
    from django.utils import timezone

    from telephony.cards import SUPERVISORS_GROUP, agent_group
    from telephony.publish import publish_to_groups

    if status not in Agent.Status.values:
        raise ValueError(f"unknown status {status!r}; expected one of {', '.join(Agent.Status.values)}")
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(status=status, status_changed_at=timezone.now())
        agent.status = status
        message = {"type": "agent.status", "agent": agent.pk, "status": status, "source": source}
        transaction.on_commit(lambda: publish_to_groups([agent_group(agent.pk), SUPERVISORS_GROUP], message))
    return agent
