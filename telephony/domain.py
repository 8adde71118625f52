"""Domain functions of the telephony app: the only code that writes calls.

Every PBX event, from any provider, arrives here as a ``CallUpdate``.
``apply_call_update`` writes the call and its event in one transaction and, only
once that transaction has committed, publishes the card and queues the CRM sync
(so a browser or retailCRM never hears of a call the database does not have).
Views, tasks, consumers and socket listeners call these functions; none of them
writes models directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from ctihub.phones import e164_or_empty
from telephony import updates as u
from telephony.models import Call, CallEvent, Listener, PbxAccount, Terminal

logger = logging.getLogger(__name__)

# Istra recycles its (negative, small) call ids. A start frame for an id whose call
# ended longer ago than this is a new call; a younger one is a late or replayed frame.
CALL_ID_RECYCLE_AFTER = timedelta(minutes=5)
ACTIVE_STATES = (Call.State.RINGING, Call.State.DIALING, Call.State.TALKING, Call.State.HELD)


@dataclass(frozen=True)
class AppliedUpdate:
    call: Call
    changed: bool


def apply_call_updates(updates: list[u.CallUpdate], received: float | None = None) -> list[AppliedUpdate]:
    """Apply a burst of updates (the frames one socket read together) in order, in one transaction.

    ``received`` is ``time.monotonic()`` when the first frame of the burst came off the socket: the
    pop-up latency metric runs from there to the card's publish.
    """
    received = time.monotonic() if received is None else received
    with transaction.atomic():
        return [apply_call_update(update, received=received) for update in updates]


def apply_call_update(update: u.CallUpdate, received: float | None = None) -> AppliedUpdate:
    """Upsert the call, append its event, derive times; publish after commit."""
    received = time.monotonic() if received is None else received
    with transaction.atomic():
        call = _locked_call_for(update)
        created = False
        if call is None:
            call, created = _insert_or_lock(update)
        if not created:
            if _is_stale(call, update):
                return AppliedUpdate(call, False)
            before = _comparable(call)
            _merge(call, update)
            if _comparable(call) == before:
                return AppliedUpdate(call, False)  # a replayed or no-news frame: idempotent
        if not _record_event(call, update):
            return AppliedUpdate(Call.objects.get(pk=call.pk), False)
        call.version += 1
        call.save()
        _after_commit(call, received, _account(update.account_id).kind)
    return AppliedUpdate(call, True)


def _locked_call_for(update: u.CallUpdate) -> Call | None:
    call = (
        Call.objects.select_for_update()
        .filter(account_id=update.account_id, pbx_call_id=update.pbx_call_id)
        .first()
    )
    if call is not None and _is_recycled_id(call, update):
        # Keep the old call's history under a suffixed id; the new call takes the PBX id.
        call.pbx_call_id = f"{call.pbx_call_id}#{call.pk}"
        call.save(update_fields=["pbx_call_id"])
        return None
    return call


def _is_recycled_id(call: Call, update: u.CallUpdate) -> bool:
    return (
        call.state == Call.State.ENDED
        and update.state in (u.RINGING, u.DIALING)
        and call.ended_at is not None
        and update.occurred_at - call.ended_at > CALL_ID_RECYCLE_AFTER
    )


def _insert_or_lock(update: u.CallUpdate) -> tuple[Call, bool]:
    """Create the call; if another worker just did, lock theirs instead (and say so)."""
    call = Call(account_id=update.account_id, pbx_call_id=update.pbx_call_id, state=update.state)
    call.created_at = update.started_at or update.occurred_at
    call.direction = update.direction or u.INBOUND
    _merge(call, update)
    try:
        with transaction.atomic():
            call.save()
        return call, True
    except IntegrityError:
        existing = Call.objects.select_for_update().get(account_id=update.account_id, pbx_call_id=update.pbx_call_id)
        return existing, False


def _is_stale(call: Call, update: u.CallUpdate) -> bool:
    if update.seq is not None and call.last_seq is not None and update.seq <= call.last_seq:
        return True  # Telepo delivered an older message after a newer one
    if call.state == Call.State.ENDED and update.state != u.ENDED:
        return True  # nothing revives an ended call (a late EARLY after TERMINATED)
    return False


def _comparable(call: Call) -> tuple:
    return (
        call.state, call.direction, call.is_internal, call.remote_number_e164, call.remote_number_raw,
        call.remote_label, call.external_phone, tuple(call.allowed_actions or ()), call.state_token,
        call.answered_at, call.ended_at, call.ringing_ms, call.talking_ms, call.end_cause,
        call.terminal_id, call.agent_id, call.last_seq,
    )


def _merge(call: Call, update: u.CallUpdate) -> None:
    """Fold what the update says into the call; fields it does not mention stay."""
    account = _account(update.account_id)
    if update.direction:
        call.direction = update.direction
    if update.is_internal is not None:
        call.is_internal = update.is_internal
    if update.remote_number is not None:
        call.remote_number_raw = update.remote_number
        call.remote_number_e164 = update.remote_number_e164 or e164_or_empty(
            update.remote_number, account.default_region or None
        )
    elif update.remote_number_e164:
        call.remote_number_e164 = update.remote_number_e164
    if update.remote_label is not None:
        call.remote_label = update.remote_label
    if update.external_phone is not None:
        call.external_phone = e164_or_empty(update.external_phone, account.default_region or None) or update.external_phone
    if update.allowed_actions is not None:
        call.allowed_actions = list(update.allowed_actions)
    if update.state_token is not None:
        call.state_token = update.state_token
    if update.seq is not None:
        call.last_seq = update.seq
    _assign_terminal_and_agent(call, update)
    _move_to_state(call, update)


def _move_to_state(call: Call, update: u.CallUpdate) -> None:
    if call.state == Call.State.ENDED and update.state != u.ENDED:
        return
    call.state = update.state
    if update.state in (u.TALKING, u.HELD) and call.answered_at is None:
        call.answered_at = update.answered_at or update.occurred_at
    if update.state == u.ENDED:
        if call.answered_at is None and update.answered_at is not None:
            # The PBX says it was answered although we never saw it talking (myRCC coalesces snapshots,
            # a Telepo CONFIRMED got lost): without this, an answered call would count as missed.
            call.answered_at = update.answered_at
        call.ended_at = call.ended_at or update.occurred_at
        call.allowed_actions = []
        if update.end_cause:
            call.end_cause = update.end_cause
        elif not call.end_cause:
            call.end_cause = u.END_HANGUP if call.answered_at else u.END_NO_ANSWER
        _derive_durations(call, update)


def _derive_durations(call: Call, update: u.CallUpdate) -> None:
    if update.ringing_ms is not None:
        call.ringing_ms = update.ringing_ms
    elif call.ringing_ms is None:
        ring_end = call.answered_at or call.ended_at
        call.ringing_ms = _ms_between(call.created_at, ring_end)
    if update.talking_ms is not None:
        call.talking_ms = update.talking_ms
    elif call.talking_ms is None:
        call.talking_ms = _ms_between(call.answered_at, call.ended_at) if call.answered_at else 0


def _ms_between(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, int((end - start).total_seconds() * 1000))


def _assign_terminal_and_agent(call: Call, update: u.CallUpdate) -> None:
    if update.terminal_pbx_id:
        terminal = (
            Terminal.objects.filter(account_id=update.account_id, pbx_id=update.terminal_pbx_id)
            .only("id", "agent_id")
            .first()
        )
        if terminal is not None:
            call.terminal_id = terminal.id
            if terminal.agent_id:
                call.agent_id = terminal.agent_id
    if call.agent_id is None and update.local_party:
        from accounts.services import agent_for_local_party

        agent = agent_for_local_party(update.account_id, update.local_party)
        if agent is not None:
            call.agent_id = agent.id


def _record_event(call: Call, update: u.CallUpdate) -> bool:
    """Append the frame; False when this exact frame was stored before."""
    frame_id = update.frame_id or f"v{call.version}"
    dedupe_key = f"{update.account_id}:{update.pbx_call_id}:{update.kind}:{frame_id}"[:255]
    try:
        with transaction.atomic():
            CallEvent.objects.create(
                call=call, kind=update.kind[:40], payload=update.payload, received_at=update.occurred_at,
                dedupe_key=dedupe_key,
            )
    except IntegrityError:
        logger.info("duplicate frame ignored", extra={"dedupe_key": dedupe_key, "call_id": call.pk})
        return False
    return True


def _after_commit(call: Call, received: float | None = None, account_kind: str = "") -> None:
    call_id, version = call.pk, call.version
    transaction.on_commit(lambda: _publish_and_sync(call_id, version, received, account_kind))


def _publish_and_sync(call_id: int, version: int, received: float | None = None, account_kind: str = "") -> None:
    from crm_sync.services import call_changed
    from ctihub import metrics
    from telephony.publish import publish_call

    metrics.event_applied(account_kind)
    published = publish_call(call_id)
    if published is not None and received is not None:
        # Pop-up latency: from the frame reaching apply_call_update to its card leaving for the browsers.
        published.add_done_callback(lambda _done: metrics.popup_latency(time.monotonic() - received))
    call_changed(call_id, version)


_account_cache: dict[int, tuple[float, PbxAccount]] = {}


def _account(account_id: int) -> PbxAccount:
    """Accounts change rarely; a few seconds of caching keeps the hot path to one query."""
    now = timezone.now().timestamp()
    cached = _account_cache.get(account_id)
    if cached and now - cached[0] < 5:
        return cached[1]
    account = PbxAccount.objects.get(pk=account_id)
    _account_cache[account_id] = (now, account)
    return account


# --- Listener and account status (written by the socket supervisor) -----------------


def set_listener_state(listener_id: int, state: str, *, owner: str | None = None, error: str | None = None) -> None:
    now = timezone.now()
    fields: dict = {"state": state, "updated_at": now}
    if owner is not None:
        fields["owner"] = owner
    if error is not None:
        fields["last_error"] = error[:2000]
    if state == Listener.State.CONNECTED:
        fields["connected_since"] = now
    elif state in (Listener.State.BACKOFF, Listener.State.IDLE, Listener.State.STOPPED, Listener.State.FAILED):
        fields["connected_since"] = None
    Listener.objects.filter(pk=listener_id).update(**fields)


def count_reconnect(listener_id: int) -> None:
    from django.db.models import F

    Listener.objects.filter(pk=listener_id).update(reconnects=F("reconnects") + 1)


def touch_listener(listener_id: int, account_id: int) -> None:
    now = timezone.now()
    Listener.objects.filter(pk=listener_id).update(last_event_at=now)
    PbxAccount.objects.filter(pk=account_id).update(last_event_at=now)


def set_account_status(account_id: int, status: str, error: str | None = None) -> None:
    now = timezone.now()
    fields: dict = {"status": status}
    if error:
        fields.update(last_error=error[:2000], last_error_at=now)
    changed = PbxAccount.objects.filter(pk=account_id).exclude(status=status).update(status_since=now, **fields)
    if not changed and error:
        PbxAccount.objects.filter(pk=account_id).update(last_error=error[:2000], last_error_at=now)
