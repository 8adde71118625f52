"""What a console shows and may do: the synchronous side of the console websocket.

The consumer is protocol glue; everything that touches the database or a PBX
is here, so it can be tested without a websocket and called through
``database_sync_to_async``.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext, gettext_lazy
from django.utils.translation import gettext_lazy as _

from accounts.domain import set_agent_status
from accounts.models import Agent
from telephony import control, wallboard
from telephony.cards import SUPERVISORS_GROUP, agent_group, cards_of
from telephony.history import unreturned_missed
from telephony.models import Call, PbxAccount
from telephony.providers import registry

RECENT_WINDOW = timedelta(minutes=30)
RECENT_LIMIT = 20


class Refused(Exception):
    """An action the viewer may not take; the message is shown on the card, in the page's language (a lazy
    translation, made text by the consumer under the page's language)."""


class Viewer:
    """Who is looking: an agent, a supervisor, or both."""

    def __init__(self, user, agent: Agent | None):
        self.user = user
        self.agent = agent
        self.is_supervisor = bool(agent and agent.is_supervisor) or user.is_superuser

    @property
    def has_role(self) -> bool:
        return self.agent is not None or self.is_supervisor

    def groups(self) -> list[str]:
        groups = []
        if self.agent is not None:
            groups.append(agent_group(self.agent.pk))
        if self.is_supervisor:
            groups.append(SUPERVISORS_GROUP)
        return groups

    def visible_calls(self):
        calls = Call.objects.select_related("account")
        if self.is_supervisor:
            return calls
        return calls.filter(agent=self.agent)

    def may_see(self, card: dict) -> bool:
        return self.is_supervisor or (self.agent is not None and card.get("agent") == self.agent.pk)


def viewer_for(user) -> Viewer:
    agent = Agent.objects.filter(user=user).first() if user.is_authenticated else None
    if agent is not None:
        # The user is the one just looked up: without this the snapshot's ``me`` (``_agent_json``) read it
        # again, one query and its ORM compile per console, 4% of daphne's CPU in a connect storm (issue 16).
        agent.user = user
    return Viewer(user, agent)


def snapshot(viewer: Viewer) -> dict:
    """Live calls and recent ones; supervisors also get the agents and today's figures (``telephony.wallboard``)."""
    now = timezone.now()
    calls = viewer.visible_calls()
    live = list(calls.exclude(state=Call.State.ENDED).order_by("created_at"))
    recent = list(calls.filter(state=Call.State.ENDED, ended_at__gte=now - RECENT_WINDOW).order_by("-ended_at")[:RECENT_LIMIT])
    data = {
        "type": "snapshot",
        "me": _agent_json(viewer.agent) if viewer.agent else None,
        "supervisor": viewer.is_supervisor,
        "calls": cards_of(live + recent),
        # Today's missed calls nobody returned, by number (console_unreturned.html counts them, live).
        "unreturned_missed": unreturned_missed(viewer),
        "controls": controls(),
    }
    if viewer.is_supervisor:
        data["agents"] = [_agent_json(a) for a in Agent.objects.select_related("user")]
        data["wallboard"] = wallboard.figures(now)
    return data


def controls() -> dict[str, dict]:
    """Account id (a JSON key: text) -> what the card's call control may offer on that account's calls
    (the provider's registered ``Capabilities``). In the snapshot, not on every card: cards are built and
    published for every event, and the accounts are few and rarely change (an account added since the
    page's snapshot gets the plain controls until the next reconnect)."""
    found = {}
    for account_id, kind in PbxAccount.objects.values_list("pk", "kind"):
        try:
            caps = registry.capabilities(kind)
        except LookupError:  # a kind whose provider is no longer installed: its calls get no extras
            continue
        found[str(account_id)] = {"transfer_types": list(caps.transfer_types), "blind_transfer": caps.blind_transfer,
                                  "remove_party": caps.remove_party}
    return found


def cards_newer_than_shown(viewer: Viewer, shown: dict[int, int], live: set[int], since, until) -> list[dict]:
    """Cards the console should have had and did not: a publish lost after its commit (the worker killed
    in between, Redis restarting, a full channel) leaves a card stale until the page reloads.

    ``shown``: call id -> version the console has; ``live``: the ids it shows as not ended. Looks at
    those and at every visible call changed since ``since`` (a call whose first card never came), but
    not at changes from ``until`` on: their cards may still be on their way.
    """
    return newer_than_shown(viewer, cards_changed(live, since, until), shown, live, since)


def cards_changed(live: set[int], since, until) -> list[tuple[dict, object]]:
    """What the resync of all the consoles of a process looks at, once (``telephony.consumers.Resyncs``):
    every call changed from ``since`` to before ``until`` and the calls in ``live`` (shown as not ended
    by some console), each card with its call's ``updated_at``; ``newer_than_shown`` then picks each
    console's."""
    calls = list(Call.objects.select_related("account").filter(Q(pk__in=live) | Q(updated_at__gte=since),
                                                               updated_at__lt=until).order_by("created_at"))
    return list(zip(cards_of(calls), (call.updated_at for call in calls)))


def versions_changed(live: set[int], since, until) -> list[tuple[dict, object]]:
    """What the resync of all the consoles of a process looks at, once (``telephony.consumers.Resyncs``):
    every call changed from ``since`` to before ``until`` and the calls in ``live``, each as its id, version
    and agent (``{"id", "version", "agent"}``: what ``newer_than_shown`` and ``Viewer.may_see`` read) with
    its ``updated_at``. No card is built: ``cards_for`` builds those some console lacks."""
    rows = (Call.objects.filter(Q(pk__in=live) | Q(updated_at__gte=since), updated_at__lt=until)
            .order_by("created_at").values_list("id", "version", "agent_id", "updated_at"))
    return [({"id": call_id, "version": version, "agent": agent_id}, updated_at)
            for call_id, version, agent_id, updated_at in rows]


def cards_for(ids: set[int], until) -> dict[int, dict]:
    """The cards of these calls by id, those changed before ``until`` (a later change's card is on its way)."""
    calls = list(Call.objects.select_related("account").filter(pk__in=ids, updated_at__lt=until).order_by("created_at"))
    return {card["id"]: card for card in cards_of(calls)}


def newer_than_shown(viewer: Viewer, changed: list[tuple[dict, object]], shown: dict[int, int], live: set[int],
                     since) -> list[dict]:
    """Of ``cards_changed``, those of one console: visible to it, in its window (changed since ``since``,
    or shown live), and newer than the version it has."""
    return [card for card, updated_at in changed
            if viewer.may_see(card) and (card["id"] in live or updated_at >= since)
            and card["version"] > shown.get(card["id"], 0)]


def _agent_json(agent: Agent) -> dict:
    return {
        "id": agent.pk,
        "name": agent.user.get_full_name() or agent.user.username,
        "code": agent.extension_code,
        "status": agent.status,
        "supervisor": agent.is_supervisor,
    }


MAX_ID = 2**63 - 1  # a BIGINT primary key: past it the database raises instead of finding nothing
# Payload keys that name another call: the page sends "call"; "other_call" is what providers read (a Call).
OTHER_CALL_KEYS = ("call", "other_call")
# The conference party to remove (``conference_remove``): the page sends "party", the id of the agent's call
# (leg) that is in the conference; "party_call" is what providers read (a Call).
PARTY_KEYS = ("party", "party_call")


def call_id_from(value) -> int | None:
    """A call id as the page sends it: a positive whole number (not ``true``, not "12", not 1.0)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        return None
    return value


def _may_act_on(viewer: Viewer, call: Call | None) -> bool:
    return call is not None and (viewer.is_supervisor or bool(viewer.agent and call.agent_id == viewer.agent.pk))


def act_on_call(viewer: Viewer, call_id: int, action: str, payload: dict) -> dict:
    call = Call.objects.select_related("account").filter(pk=call_id).first()
    if not _may_act_on(viewer, call):
        raise Refused(_("this call is not yours"))
    if not all(value is None or isinstance(value, (str, int, float, bool)) for value in payload.values()):
        raise Refused(_("the payload's values must be text or numbers"))
    # What a provider reads as "other_call" or "party_call" is always a Call resolved and checked here,
    # never what the page sent.
    other = _named_call(viewer, call, payload, OTHER_CALL_KEYS, _OTHER_CALL_REFUSALS)
    party = _named_call(viewer, call, payload, PARTY_KEYS, _PARTY_REFUSALS)
    payload = {key: value for key, value in payload.items() if key not in OTHER_CALL_KEYS + PARTY_KEYS}
    if other is not None:
        payload["other_call"] = other
    if party is not None:
        payload["party_call"] = party
    return control.call_action(call, action, payload)


# Why a call named in a payload is refused, shown on the card: (which, not yours, elsewhere, ended).
_OTHER_CALL_REFUSALS = (
    gettext_lazy("which other call?"), gettext_lazy("the other call is not yours"),
    gettext_lazy("the other call is on another PBX account"), gettext_lazy("the other call has ended"),
)
_PARTY_REFUSALS = (
    gettext_lazy("which party?"), gettext_lazy("that party's call is not yours"),
    gettext_lazy("that party's call is on another PBX account"), gettext_lazy("that party has left already"),
)


def _named_call(viewer: Viewer, call: Call, payload: dict, keys: tuple[str, str], refusals: tuple) -> Call | None:
    """The viewer's other live call, on the same account, that one of ``keys`` of the payload names, if any."""
    which, not_yours, elsewhere, ended = (str(text) for text in refusals)
    named = [payload[key] for key in keys if key in payload]
    if not named:
        return None
    if len(named) > 1 and named[0] != named[1]:
        raise Refused(which)
    other_id = call_id_from(named[0])
    if other_id is None:
        raise Refused(which)
    other = Call.objects.select_related("account").filter(pk=other_id).first()
    if not _may_act_on(viewer, other):
        raise Refused(not_yours)
    if other.pk == call.pk:
        raise Refused(gettext("pick another call than this one"))
    if other.account_id != call.account_id:
        raise Refused(elsewhere)
    if other.state == Call.State.ENDED:
        raise Refused(ended)
    return other


def dial(viewer: Viewer, number: str) -> dict:
    if viewer.agent is None:
        raise Refused(_("only agents with a terminal can place calls"))
    number = (number or "").strip()
    if not number or len(number) > 40 or not all(ch.isdigit() or ch in "+*# ()-." for ch in number):
        raise Refused(_("enter a phone number or an extension"))
    return control.place_call(viewer.agent, number)


def push_agent_status(sender, agent: Agent, status: str, source: str, **kwargs) -> None:
    """An agent's new status (``accounts.signals.agent_status_changed``, after commit) to their consoles and the
    supervisors'."""
    from telephony.publish import publish_to_groups

    message = {"type": "agent.status", "agent": agent.pk, "status": status, "source": source}
    publish_to_groups([agent_group(agent.pk), SUPERVISORS_GROUP], message)


def change_status(viewer: Viewer, status: str) -> dict:
    if viewer.agent is None:
        raise Refused(_("only agents have a status"))
    try:
        set_agent_status(viewer.agent, status, source="console")
    except ValueError as exc:
        raise Refused(exc.args[0] if exc.args else str(exc)) from None  # a lazy translation stays lazy
    return {"status": status}

