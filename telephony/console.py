"""What a console shows and may do: the synchronous side of the console websocket.

The consumer is protocol glue; everything that touches the database or a PBX
is here, so it can be tested without a websocket and called through
``database_sync_to_async``.
"""

from __future__ import annotations

import copy
from datetime import timedelta

from django.db.models import F, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone
from django.utils.translation import gettext, gettext_lazy
from django.utils.translation import gettext_lazy as _

from accounts.domain import set_agent_status
from accounts.models import Agent
from telephony import control, wallboard
from telephony.cards import SUPERVISORS_GROUP, agent_group, cards_of
from telephony.history import unreturned_missed, unreturned_missed_by_agent
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
    return viewers_for([user])[0]


def viewers_for(users: list) -> list[Viewer]:
    """The viewers of many users (consoles connecting together) with one query: one each was 4% of daphne's CPU
    in a connect storm (issue 16)."""
    ids = [user.pk for user in users if user.is_authenticated]
    agents = {agent.user_id: agent for agent in Agent.objects.filter(user_id__in=ids)} if ids else {}
    viewers = []
    for user in users:
        agent = agents.get(user.pk) if user.is_authenticated else None
        if agent is not None:
            # Its own copy, whose user is the one given: without it the snapshot's ``me`` (``_agent_json``) read
            # the user again, one query and its ORM compile per console (issue 16).
            agent = copy.copy(agent)
            agent.user = user
        viewers.append(Viewer(user, agent))
    return viewers


def snapshot(viewer: Viewer) -> dict:
    """Live calls and recent ones; supervisors also get the agents and today's figures (``telephony.wallboard``)."""
    return snapshots([viewer])[0]


def snapshots(viewers: list[Viewer]) -> list[dict]:
    """``snapshot`` of each viewer, read together: consoles that connect at once (a deploy, a network blip)
    share the queries. One console at a time, its live calls, recent calls, unreturned missed calls and
    accounts' controls were four queries and their ORM work each, 45% of daphne's CPU in a connect storm
    (issue 16). Here: the agents' live and recent calls in two queries, their unreturned missed calls in one,
    the supervisors' (all the calls) once, the controls once. Each viewer still gets exactly what its own
    ``snapshot`` read would have; what was read is only shared between snapshots read in the same moment.
    """
    now = timezone.now()
    agent_ids = list(dict.fromkeys(v.agent.pk for v in viewers if not v.is_supervisor and v.agent is not None))
    calls_of_agent: dict[int, list[Call]] = {agent_id: [] for agent_id in agent_ids}
    if agent_ids:
        calls = Call.objects.select_related("account").filter(agent__in=agent_ids)
        live = calls.exclude(state=Call.State.ENDED).order_by("created_at")
        # Each agent's RECENT_LIMIT newest ended calls, as its own query's slice read them.
        rank = Window(RowNumber(), partition_by=[F("agent_id")], order_by=[F("ended_at").desc(), F("pk").desc()])
        recent = calls.filter(state=Call.State.ENDED, ended_at__gte=now - RECENT_WINDOW).annotate(_rank=rank) \
            .filter(_rank__lte=RECENT_LIMIT).order_by("-ended_at", "-pk")
        for call in [*live, *recent]:
            calls_of_agent[call.agent_id].append(call)
        unreturned = unreturned_missed_by_agent(agent_ids)
        read = [call for agent_calls in calls_of_agent.values() for call in agent_calls]
        cards_of_agent: dict[int, list[dict]] = {agent_id: [] for agent_id in agent_ids}
        for call, card in zip(read, cards_of(read)):
            cards_of_agent[call.agent_id].append(card)
    supervisors = [viewer for viewer in viewers if viewer.is_supervisor]
    if supervisors:
        calls = Call.objects.select_related("account")
        live = list(calls.exclude(state=Call.State.ENDED).order_by("created_at"))
        recent = list(calls.filter(state=Call.State.ENDED, ended_at__gte=now - RECENT_WINDOW)
                      .order_by("-ended_at", "-pk")[:RECENT_LIMIT])
        supervised = {
            "calls": cards_of(live + recent),
            "unreturned_missed": unreturned_missed(supervisors[0]),
            "agents": [_agent_json(a) for a in Agent.objects.select_related("user")],
            "wallboard": wallboard.figures(now),
        }
    shared_controls = controls()
    found = []
    for viewer in viewers:
        data = {
            "type": "snapshot",
            "me": _agent_json(viewer.agent) if viewer.agent else None,
            "supervisor": viewer.is_supervisor,
        }
        if viewer.is_supervisor:
            data["calls"] = list(supervised["calls"])
            # Today's missed calls nobody returned, by number (console_unreturned.html counts them, live).
            data["unreturned_missed"] = list(supervised["unreturned_missed"])
        elif viewer.agent is not None:
            data["calls"] = list(cards_of_agent[viewer.agent.pk])
            data["unreturned_missed"] = list(unreturned[viewer.agent.pk])
        else:  # no role: nothing to see (the consumer refuses it before any snapshot)
            data["calls"], data["unreturned_missed"] = [], []
        data["controls"] = shared_controls
        if viewer.is_supervisor:
            data["agents"] = supervised["agents"]
            data["wallboard"] = supervised["wallboard"]
        found.append(data)
    return found


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

