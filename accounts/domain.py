"""Domain functions about agents."""

from __future__ import annotations

from django.utils.functional import lazy
from django.utils.translation import gettext

from accounts.models import Agent
from accounts.signals import agent_status_changed

# Text when shown (the console makes it text in the agent's language), not when raised.
_unknown_status = lazy(lambda status, expected: gettext("unknown status %(status)s; expected one of %(expected)s")
                       % {"status": status, "expected": expected}, str)


class NotAnAgent(PermissionError):
    """The user has no agent profile: an admin must create one."""


def agent_of(user) -> Agent | None:
    if not user.is_authenticated:
        return None
    return Agent.objects.filter(user=user).first()


def set_agent_status(agent: Agent, status: str, source: str = "console") -> Agent:
    """Store the status and announce it after commit (``agent_status_changed``: the consoles and the
    supervisors hear of it through telephony)."""
    from django.db import transaction
    from django.utils import timezone

    if status not in Agent.Status.values:
        raise ValueError(_unknown_status(repr(status)[:60], ", ".join(Agent.Status.values)))
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(status=status, status_changed_at=timezone.now())
        agent.status = status
        transaction.on_commit(
            lambda: agent_status_changed.send(Agent, agent=agent, status=status, source=source))
    return agent


def set_console_alerts(agent: Agent, *, desktop: bool | None = None, sound: bool | None = None) -> Agent:
    """Store the console's alert switches (desktop notifications, ring sound); ``None`` leaves one as it is.
    Only the given fields are written, so a save from one tab does not undo the other switch saved from another."""
    fields = {}
    if desktop is not None:
        fields["desktop_notifications"] = bool(desktop)
    if sound is not None:
        fields["ring_sound"] = bool(sound)
    if fields:
        Agent.objects.filter(pk=agent.pk).update(**fields)
        for name, value in fields.items():
            setattr(agent, name, value)
    return agent
