"""Domain functions that act on a PBX: test a login, sync terminals, place calls, control calls.

The browser console, retailCRM's makeCallUrl and the admin all come here; this
module picks the account's provider, refuses what the call's state does not
allow, and returns the PBX's answer or raises ``ProviderError``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone
from django.utils.functional import lazy
from django.utils.translation import gettext, gettext_lazy

from accounts.models import Agent
from telephony import updates as u
from telephony.models import Call, Listener, PbxAccount, Terminal
from telephony.providers import registry
from telephony.providers.base import ActionRefused, ListenerSpec, Provider, ProviderError
from telephony.providers.registry import cached_provider, one_at_a_time, provider_class, provider_for

logger = logging.getLogger(__name__)


class NoTerminal(ProviderError):
    """The agent has no terminal to call from."""

    def __init__(self, message: str):
        super().__init__(message, permanent=True)


# --- A provider per account, reused for REST calls (one login, not one per click) ------
# The cache is the registry's (``cached_provider``): the providers' own modules use it too.

forget_providers = registry.forget_providers


# --- Admin-facing operations ---------------------------------------------------------


def test_connection(account: PbxAccount) -> str:
    return provider_for(account).test_connection()


def sync_terminals(account: PbxAccount) -> tuple[int, int]:
    """Mirror the PBX's terminal list; returns (seen, deactivated). Agents stay assigned."""
    provider, lock = cached_provider(account)
    with lock:
        infos = provider.fetch_terminals()
    now = timezone.now()
    seen_ids = []
    with transaction.atomic():
        for info in infos:
            Terminal.objects.update_or_create(
                account=account,
                pbx_id=info.pbx_id,
                defaults={
                    "extension": info.extension, "label": info.label, "device_model": info.device_model,
                    "department": info.department, "photo_url": info.photo_url,
                    "pstn_numbers": list(info.pstn_numbers), "active": True, "synced_at": now,
                },
            )
            seen_ids.append(info.pbx_id)
        deactivated = Terminal.objects.filter(account=account, active=True).exclude(pbx_id__in=seen_ids).update(
            active=False, synced_at=now
        )
    return len(seen_ids), deactivated


def restart_listeners(account: PbxAccount) -> int:
    """Ask whichever worker holds them to reconnect; failed listeners get another chance."""
    from telephony.sockets.supervisor import request_restart

    count = Listener.objects.filter(account=account).exclude(state=Listener.State.STOPPED).update(
        state=Listener.State.IDLE, last_error=""
    )
    request_restart(account.pk)
    return count


# What the supervisor reads of the listeners a scan returns (and their runners: the id).
SCANNED_LISTENER_FIELDS = ("id", "account_id", "name", "state", "terminal_id")


def ensure_listeners(account: PbxAccount, provider: Provider) -> list[tuple[Listener, ListenerSpec]]:
    """The Listener rows the account needs now; rows no longer needed are marked stopped.

    Every worker runs this for every account every few seconds, with thousands of terminals:
    it reads all the account's rows at once and only writes what changed.
    """
    # Only what the scan reads: a Terminal and a Listener built whole for each of thousands of rows were most
    # of a scan's CPU (42.9 ms for 2,000 terminals), and every worker scans every account every few seconds.
    terminals = dict(account.terminals.filter(active=True).values_list("pbx_id", "id"))
    specs = provider.listener_specs(sorted(terminals))
    rows = Listener.objects.filter(account=account).only(*SCANNED_LISTENER_FIELDS)
    existing = {listener.name: listener for listener in rows}
    missing = [
        Listener(account=account, name=spec.name,
                 terminal_id=terminals.get(spec.terminal_pbx_id) if spec.terminal_pbx_id else None)
        for spec in specs if spec.name not in existing
    ]
    if missing:
        Listener.objects.bulk_create(missing, ignore_conflicts=True)  # another worker's scan may be first
        existing.update({l.name: l for l in rows.filter(name__in=[m.name for m in missing])})
    revived = [existing[spec.name].pk for spec in specs if existing[spec.name].state == Listener.State.STOPPED]
    if revived:
        Listener.objects.filter(pk__in=revived).update(state=Listener.State.IDLE)
        for spec in specs:
            if existing[spec.name].pk in revived:
                existing[spec.name].state = Listener.State.IDLE
    wanted_names = {spec.name for spec in specs}
    unwanted = [l.pk for name, l in existing.items() if name not in wanted_names and l.state != Listener.State.STOPPED]
    if unwanted:
        Listener.objects.filter(pk__in=unwanted).update(state=Listener.State.STOPPED, owner="", connected_since=None)
    return [(existing[spec.name], spec) for spec in specs]


# --- Click-to-call and call control ----------------------------------------------------


def dialling_terminal(agent: Agent, account_ids: Iterable[int] | None = None) -> Terminal | None:
    """The terminal ``agent``'s calls are placed from: one choice for the console and for retailCRM.

    ``account_ids`` limits it to those accounts (the ones a retailCRM integration serves; None: any).
    The admin's choice (``Agent.dialling_terminal``) while it is usable: still the agent's, active, on
    an enabled account of ``account_ids`` whose PBX can place calls. Otherwise the first usable one of
    the agent's terminals, in a fixed order, so both paths always agree:

    1. an account whose PBX can also control the call (myRCC, Telepo) before one that can only dial
       (myCrm, End User API): the call it places then has working buttons on the card;
    2. then the account's name, the terminal's extension and its PBX id (the terminals' own order).
    """
    terminals = agent.terminals.filter(
        active=True, account__enabled=True, account__kind__in=_kinds_that_dial()
    ).select_related("account")
    if account_ids is not None:
        terminals = terminals.filter(account_id__in=list(account_ids))
    usable = list(terminals)
    chosen = next((t for t in usable if t.pk == agent.dialling_terminal_id), None)
    if chosen is not None:
        return chosen
    return min(usable, key=_fallback_order, default=None)


def _fallback_order(terminal: Terminal) -> tuple:
    controls = bool(provider_class(terminal.account.kind).actions)
    return (not controls, terminal.account.name, terminal.extension, terminal.pbx_id)


@functools.cache
def _kinds_that_dial() -> tuple[str, ...]:
    """The PBX kinds whose provider places calls (overrides ``Provider.place_call``)."""
    return tuple(kind for kind in registry.kinds() if provider_class(kind).place_call is not Provider.place_call)


def terminal_for(agent_or_terminal: Agent | Terminal) -> Terminal:
    if isinstance(agent_or_terminal, Terminal):
        return agent_or_terminal
    terminal = dialling_terminal(agent_or_terminal)
    if terminal is None:
        raise NoTerminal(_no_terminal(str(agent_or_terminal)))
    return terminal


def place_call(agent_or_terminal: Agent | Terminal, number: str) -> dict:
    """Dial ``number`` from the agent's terminal; returns the PBX's answer."""
    terminal = terminal_for(agent_or_terminal)
    provider, lock = cached_provider(terminal.account)
    with one_at_a_time(terminal.account, lock):
        answer = provider.place_call(terminal.pbx_id, number)
    logger.info("placed a call", extra={"account_id": terminal.account_id, "terminal": terminal.pbx_id})
    return answer or {}


# Text when shown (in the console's language: telephony.consumers), not when raised.
_no_terminal = lazy(lambda agent: gettext("%(agent)s has no active terminal: assign one in the admin")
                    % {"agent": agent}, str)
_unknown_action = lazy(lambda action: gettext("unknown action %(action)s") % {"action": action}, str)
_not_possible_now = lazy(lambda action, allowed: gettext("%(action)s is not possible now (the PBX allows: %(allowed)s)")
                         % {"action": action, "allowed": allowed}, str)


def call_action(call: Call, action: str, payload: dict | None = None) -> dict:
    """Perform ``action`` (a normalised name) on ``call`` if the PBX allows it right now."""
    if action not in u.ACTIONS:
        raise ActionRefused(_unknown_action(repr(action)[:100]))
    if call.state == Call.State.ENDED:
        raise ActionRefused(gettext_lazy("the call has ended"))
    if call.allowed_actions and action not in call.allowed_actions:
        allowed = ", ".join(call.allowed_actions)
        raise ActionRefused(_not_possible_now(action, allowed))
    provider, lock = cached_provider(call.account)
    with one_at_a_time(call.account, lock):
        answer = provider.call_action(call, action, payload or {})
    return answer or {}
