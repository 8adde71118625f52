"""Which agent a PBX means when it names a call's party by user id, email or number."""

from __future__ import annotations

from django.db.models import Q

from accounts.models import Agent
from ctihub.lib.phones import e164_or_empty
from telephony.models import Terminal


def agent_for_local_party(account_id: int, local_party: dict[str, str]) -> Agent | None:
    """The agent a PBX means when it names a party by user id, email or number (Telepo)."""
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
