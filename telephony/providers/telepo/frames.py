"""Telepo payloads into ``CallUpdate``: CRM connector webhooks and call-state snapshots.

Both describe one call of one Telepo user. A webhook carries ``seq_num`` per
call, so the domain drops duplicates and late deliveries (``seq <= last_seq``)
and never revives a terminated call. A snapshot carries no sequence number but a
``stateToken``; it is state, not a transition, so applying it twice is a no-op.
Its token does not name it, though: the token follows the call's own state, while
the call's actions also change with the user's other calls (a second call makes
conference and transfer possible on the first) and a webhook that lags behind the
snapshot clears the token we hold. A snapshot is a frame of its own each time it is
asked (``token<N>@<asked at>``); whether it is news is the domain's comparison.

One value we do not know never costs the rest of a message, nor a snapshot its
other calls: the spec lists the webhook's states but shows only two snapshot
statuses, and a real PBX will say more. A webhook state or snapshot status we do
not know is kept as given (in the stored event's payload, and in the call's
``pbx_state``, which the card shows) and its call stays live in its last known
state: the update carries a stand-in (ringing or dialling for a call we have not
seen) that ``branches`` swaps for the call's own state.
An unknown termination reason, direction or device type is read as "not said".
Each unknown value is logged once per account and value (``note_unknown``), not
once per message.

The spec shows one timestamp, ``2018-02-02T12:34:57.699+0000``, and says "UTC".
Read as well: ``Z`` or ``+00:00``, no offset (UTC, as the spec says), a space for
the ``T``, any number of decimals, and epoch seconds or milliseconds. One that
still cannot be read is the time the message came (``seq_num``, not the time,
orders a call's messages), noted once per account. ``NaN`` and ``Infinity``
(which Python's JSON reader takes, and PostgreSQL's JSON refuses) read as null.

The number an incoming call was dialled on (``external_phone``, retailCRM's
``externalPhone`` and so the shop): the webhook's ``local_number``, the number of
the user it reached, which is what was dialled when the call came straight to
them; and a snapshot's ``historyInfo.initialParty``, the first target before
Telepo retargeted the call to the user (a switchboard, queue or shop number; the
spec's example has the subject "Main Switchboard number"), which is more precise
and so wins. ``acdSupport`` is not used: the spec does not say what it holds. A
call keeps the first number a webhook gave it (``branches``): later messages of
other devices (a mobile, the voicemail) name their own numbers.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from telephony import updates as u
from telephony.providers import unexpected
from telephony.providers.times import from_epoch
from telephony.updates import CallUpdate, FrameRejected

logger = logging.getLogger(__name__)

WEBHOOK_KIND = "webhook"
SNAPSHOT_KIND = "snapshot"

# --- the webhook --------------------------------------------------------------------------

WEBHOOK_STATES = ("TRYING", "PROCEEDING", "EARLY", "CONFIRMED", "TERMINATED")
TERMINATION_REASONS = ("CANCELLED", "ANSWERED_ELSEWHERE", "HANGUP", "REJECTED")
DIRECTIONS = {"INCOMING": u.INBOUND, "OUTGOING": u.OUTBOUND}
DEVICE_TYPES = ("MOBILE", "SOFT", "DESKTOP", "FXS", "EXTERNAL_PBX", "FAX", "VOICEMAIL", "EXTERNAL", "MOBILE_EXT",
                "CONFERENCE", "QUEUE", "MOBILE_VOIP", "WEB")
# The spec's form, read loosely: date, T or space, time, decimals (any number), offset (any form, or none).
TIMESTAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:[.,](\d+))?\s*(Z|z|UTC|[+-]\d{2}(?::?\d{2})?)?")
SEQ_MAX = 2**63 - 1  # what the call's last_seq column (a BIGINT) holds

# Until a snapshot says precisely what the PBX allows, a webhook's state implies
# the usual actions, so a card shows the right buttons from the first ring.
DEFAULT_ACTIONS = {
    (u.RINGING, u.INBOUND): (u.ANSWER, u.REDIRECT, u.HANGUP),
    (u.DIALING, u.OUTBOUND): (u.HANGUP,),
    (u.TALKING, u.INBOUND): (u.HOLD, u.PARK, u.MUTE, u.MOVE, u.REDIRECT, u.SEND_DTMF, u.HANGUP),
    (u.TALKING, u.OUTBOUND): (u.HOLD, u.PARK, u.MUTE, u.MOVE, u.REDIRECT, u.SEND_DTMF, u.HANGUP),
}


def parse_webhook_body(raw: bytes | str, account_id: int) -> CallUpdate:
    """The webhook's JSON body as an update; FrameRejected (with a reason for the PBX's log) otherwise."""
    constants = []
    try:
        body = json.loads(raw, parse_constant=lambda name: constants.append(name))  # NaN, Infinity: null
    except (ValueError, UnicodeDecodeError):
        raise FrameRejected("the body is not JSON") from None
    except RecursionError:  # nested deeper than the decoder goes (a 64 KiB body can be)
        raise FrameRejected("the body is not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise FrameRejected("the body is not a JSON object")
    for name in constants:
        note_unknown(account_id, "JSON constant (read as null)", name)
    return parse_webhook(body, account_id)


def parse_webhook(body: dict[str, Any], account_id: int) -> CallUpdate:
    seq = _seq_num(body.get("seq_num"))
    call_id = _required_text(body, "call_id")
    state = body.get("state")
    if state not in WEBHOOK_STATES:
        note_unknown(account_id, "webhook state", state)
    direction = DIRECTIONS.get(body.get("direction")) if isinstance(body.get("direction"), str) else None
    if direction is None:
        note_unknown(account_id, "webhook direction", body.get("direction"))
    reason = body.get("termination-reason")
    if reason not in (None, "") and reason not in TERMINATION_REASONS:
        note_unknown(account_id, "termination-reason", reason)
    if body.get("device_type") not in (None, "") and body.get("device_type") not in DEVICE_TYPES:
        note_unknown(account_id, "device_type", body.get("device_type"))
    occurred_at = _timestamp(body.get("timestamp"))
    if occurred_at is None:
        note_unknown(account_id, "timestamp (the message is dated when it came)", body.get("timestamp"))
        occurred_at = datetime.now(UTC)
    call_state = _webhook_state(state, direction)
    local_user = _text(body.get("local_user_id"))
    remote_user = _text(body.get("remote_user_id") or body.get("remote_use_id"))  # the spec's table says both
    remote_number = _text(body.get("remote_number"))
    local_number = _text(body.get("local_number"))
    return CallUpdate(
        account_id=account_id,
        pbx_call_id=call_id,
        state=call_state,
        kind=WEBHOOK_KIND,
        payload=body,
        occurred_at=occurred_at,
        terminal_pbx_id=local_user or None,
        direction=direction,
        is_internal=bool(remote_user),
        remote_number=remote_number or None,
        remote_label=_text(body.get("remote_email")) or remote_user or None,
        # An outgoing call's shop is the click-to-call's; an internal call has none.
        external_phone=(local_number or None) if direction == u.INBOUND and not remote_user else None,
        allowed_actions=None if call_state == u.ENDED else DEFAULT_ACTIONS.get((call_state, direction), (u.HANGUP,)),
        # The token we hold describes a state this message just replaced; the
        # snapshot that follows brings the new one. Until then actions go without one.
        state_token="",
        seq=seq,
        end_cause=end_cause_for(reason, direction) if call_state == u.ENDED else None,
        # A message is its number and its user: a transfer's target reports under the call's id, and nothing
        # says Telepo goes on with the first user's numbers rather than start again.
        frame_id=f"seq{seq}:{local_user}" if local_user else f"seq{seq}",
        pbx_state=None if state in WEBHOOK_STATES else pbx_state_of(state),
        local_party={
            "user_id": local_user,
            "email": _text(body.get("local_email")),
            "number": _text(body.get("local_number")),
        },
    )


def unknown_state(update: CallUpdate) -> bool:
    """True when Telepo named the update's state in words we do not know: its state is then a stand-in.

    Only for updates read from Telepo's own words (their payload names the call); the
    updates ctihub makes itself (a call absent from a snapshot) say what they mean.
    """
    payload = update.payload
    if update.kind == WEBHOOK_KIND and "call_id" in payload:
        return payload.get("state") not in WEBHOOK_STATES
    if update.kind == SNAPSHOT_KIND and "callId" in payload:
        return not _known_status(payload.get("status"))
    return False


def pbx_state_of(value: Any) -> str:
    """An unknown state as the card shows it: Telepo's word, or what stood in its place (None, 42)."""
    return value.strip() if isinstance(value, str) and value.strip() else repr(value)


# --- saying it once ---------------------------------------------------------------------------

# (account, what, value) already logged by this process. Bounded: a PBX inventing a new word per
# message must not grow a worker's memory; past the bound nothing more is logged (the events keep it).
def note_unknown(account_id: int, what: str, value: Any) -> bool:
    """Log a value the spec does not list, once per account, kind of value and value; True when logged now."""
    return log_once(account_id, (what, repr(value)[:200]),
                    "Telepo sent an unknown %s %.200r: kept as given, the rest applies", what, value)


def log_once(account_id: int, key: tuple, message: str, *args: Any) -> bool:
    """A warning with the account, logged once per account and ``key`` (the providers' one memory of it)."""
    return unexpected.warn_once(logger, account_id, "telepo", key, message, *args)


def forget_noted() -> None:
    """For tests: log every unknown value again."""
    unexpected.forget()


def implied_answer(update: CallUpdate) -> CallUpdate | None:
    """The answer a TERMINATED HANGUP implies, for a call whose CONFIRMED is lost or late.

    The webhook's states are SIP dialog states (RFC 4235): a dialog ends in a
    hang-up (BYE) only once it was confirmed; before that it is cancelled or
    rejected. So the call was answered, at the latest when it ended. Applied
    first, it keeps a late CONFIRMED (dropped as stale) from leaving an answered
    call recorded as missed.
    """
    if update.kind != WEBHOOK_KIND or update.state != u.ENDED or update.payload.get("termination-reason") != "HANGUP":
        return None
    return replace(update, state=u.TALKING, seq=None, end_cause=None, allowed_actions=None,
                   frame_id=f"{update.frame_id}:answered")


def _webhook_state(state: Any, direction: str | None) -> str:
    if state == "CONFIRMED":
        return u.TALKING
    if state == "TERMINATED":
        return u.ENDED
    # TRYING, PROCEEDING, EARLY: set up, not answered yet. An unknown state is a stand-in
    # the same (see the module's docstring); an unknown direction is the domain's default, in.
    return u.DIALING if direction == u.OUTBOUND else u.RINGING


def end_cause_for(reason: Any, direction: str | None) -> str | None:
    """The normalised end cause of a termination-reason; None where the domain tells it from answered_at."""
    if reason == "REJECTED":
        return u.END_REJECTED
    if reason == "ANSWERED_ELSEWHERE":
        return u.END_ANSWERED_ELSEWHERE
    if reason == "CANCELLED":
        # The caller gave up: for us a missed call if it was coming in.
        return u.END_CANCELLED if direction == u.OUTBOUND else u.END_NO_ANSWER
    return None  # HANGUP, no reason or one we do not know: the domain tells a hangup from a missed call by answered_at


def _seq_num(value: Any) -> int:
    """A non-negative integer a BIGINT holds: a JSON number (a whole float too) or a string of digits."""
    if isinstance(value, float) and value.is_integer() and 0 <= value < 2**53:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = value.strip() if isinstance(value, str) else ""
    # ASCII digits only ("²".isdigit() is true, int("²") fails), and what a BIGINT column holds.
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= SEQ_MAX):
        raise FrameRejected("seq_num must be a non-negative integer")
    return int(text)


def _required_text(body: dict, name: str) -> str:
    value = body.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise FrameRejected(f"{name} is missing")
    return value.strip()


def _timestamp(value: Any) -> datetime | None:
    """The webhook's time, read as loosely as the module's docstring says; None when it cannot be read."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return from_epoch(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return from_epoch(int(text))
    match = TIMESTAMP.fullmatch(text)
    if match is None:
        return None
    day, time_of_day, decimals, offset = match.groups()
    try:
        at = datetime.fromisoformat(f"{day}T{time_of_day}").replace(tzinfo=UTC)
    except ValueError:  # 2018-02-30, 25:00:00
        return None
    if decimals:
        at += timedelta(microseconds=int(decimals[:6].ljust(6, "0")))
    if offset and offset[0] in "+-":
        digits = offset[1:].replace(":", "")
        shift = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        if shift >= timedelta(hours=24):
            return None
        at -= shift if offset[0] == "+" else -shift
    return at


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


# --- the snapshot -----------------------------------------------------------------------------

# The spec shows RINGING and HELD; the rest are the names Telepo clients use.
SNAPSHOT_STATES = {
    "RINGING": None, "ALERTING": None, "CALLING": None, "DIALING": None, "PROCEEDING": None, "EARLY": None,
    "TRYING": None,
    "ACTIVE": u.TALKING, "CONNECTED": u.TALKING, "TALKING": u.TALKING, "ESTABLISHED": u.TALKING,
    "CONFIRMED": u.TALKING,
    "HELD": u.HELD, "PARKED": u.HELD, "REMOTE_HELD": u.TALKING,
    "TERMINATED": u.ENDED, "IDLE": u.ENDED, "RELEASED": u.ENDED, "ENDED": u.ENDED,
}

# Telepo's action names (snapshot ``actions``) and what the rest of ctihub calls them.
ACTION_NAMES: dict[str, tuple[str, ...]] = {
    "ANSWER": (u.ANSWER,),
    "HOLD": (u.HOLD,),
    "RESUME": (u.RESUME,),
    "ALTERNATE": (u.ALTERNATE,),
    "PARK": (u.PARK,),
    "PICKUP": (u.PICKUP,),
    "MUTE": (u.MUTE,),
    "UNMUTE": (u.UNMUTE,),
    "MOVE": (u.MOVE,),
    # The spec's snapshot lists a bare TRANSFER; both transfer endpoints need it.
    "TRANSFER": (u.TRANSFER, u.REDIRECT),
    "SINGLE_STEP_TRANSFER": (u.REDIRECT,),
    "SINGLESTEPTRANSFER": (u.REDIRECT,),
    "DTMF": (u.SEND_DTMF,),
    "SEND_DTMF": (u.SEND_DTMF,),
    "CONFERENCE_ADD": (u.CONFERENCE_ADD,),
    "CONFERENCE_LEAVE": (u.LEAVE,),
    "CONFERENCE_REMOVE": (u.CONFERENCE_REMOVE,),
    "TERMINATE": (u.HANGUP,),
    "HANGUP": (u.HANGUP,),
}
_ACTION_IN_TEXT = re.compile(r"action\W*([A-Z_]+)")


@dataclass
class ParsedSnapshot:
    """A snapshot read call by call: the calls it lists, and what could not be read."""

    updates: list[CallUpdate] = field(default_factory=list)
    # Every call id the snapshot names, readable or not: a call it names has not ended.
    listed: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)
    # True when a call without a readable id was skipped: then no absence proves an end.
    unnamed_skipped: bool = False


def parse_snapshot(body: Any, account_id: int, user_id: str, fetched_at: datetime) -> ParsedSnapshot:
    """Every call of a user's snapshot (``GET /api/call/state/v1/snapshot``), each on its own.

    FrameRejected only when the body is not a snapshot at all; a call that cannot be read
    is skipped (logged once per account and reason) and every other call applies.
    """
    if not isinstance(body, dict) or not isinstance(body.get("calls", []), list):
        raise FrameRejected("a snapshot is an object with a list of calls")
    parsed = ParsedSnapshot()
    for call in body.get("calls") or []:
        call_id = _call_id_of(call)
        if call_id:
            parsed.listed.add(call_id)
        try:
            parsed.updates.append(parse_call_state(call, account_id, user_id, fetched_at))
        except FrameRejected as exc:
            parsed.skipped.append(f"{call_id or 'a call'}: {exc}")
            parsed.unnamed_skipped = parsed.unnamed_skipped or not call_id
            log_once(account_id, ("unreadable snapshot call", str(exc)),
                     "Telepo's snapshot of %s lists a call that cannot be read (%s): skipped, the others apply",
                     user_id, exc)
    return parsed


def parse_call_state(call: Any, account_id: int, user_id: str, fetched_at: datetime) -> CallUpdate:
    """One call as the snapshot (or an action's answer) describes it."""
    if not isinstance(call, dict):
        raise FrameRejected("a call state is a JSON object")
    call_id = _required_text(call, "callId")
    status = call.get("status")
    direction = u.INBOUND if call.get("inbound") else u.OUTBOUND
    known = _known_status(status)
    if not known:
        note_unknown(account_id, "snapshot status", status)
    # Unknown: a stand-in until branches.settle_snapshot gives the call its last known state.
    state = (SNAPSHOT_STATES[status] if known else None) or (u.RINGING if direction == u.INBOUND else u.DIALING)
    remote = call.get("remoteParty") if isinstance(call.get("remoteParty"), dict) else {}
    token = call.get("stateToken")
    tel = _tel_number(remote.get("telUri"))
    return CallUpdate(
        account_id=account_id,
        pbx_call_id=call_id,
        state=state,
        kind=SNAPSHOT_KIND,
        payload=call,
        occurred_at=fetched_at,
        terminal_pbx_id=_text(call.get("userId")) or user_id,
        direction=direction,
        is_internal=remote.get("type") == "USER_ID" if remote else None,
        remote_number=(tel or _text(remote.get("displayNumber"))) or None,
        remote_number_e164=tel if tel.startswith("+") else None,
        remote_label=_text(remote.get("displayName")) or None,
        external_phone=dialled_number(call) if direction == u.INBOUND else None,
        allowed_actions=parse_actions(call.get("actions")),
        state_token=str(token) if isinstance(token, int) and not isinstance(token, bool) else None,
        # Not the token alone: a later snapshot under the same token may bring other actions, or give
        # back the token a late webhook cleared; stored as a replay of the first, it would be dropped.
        frame_id=f"token{token}@{fetched_at.isoformat()}" if token is not None else None,
        pbx_state=None if known else pbx_state_of(status),
    )


def dialled_number(call: dict) -> str | None:
    """The number the caller first dialled, from the call's ``historyInfo.initialParty``; None when not said.

    An initial party that is the remote party (the spec's transfer answer names the caller
    everywhere) says nothing about what was dialled.
    """
    history = call.get("historyInfo")
    initial = history.get("initialParty") if isinstance(history, dict) else None
    if not isinstance(initial, dict):
        return None
    number = _tel_number(initial.get("telUri"))
    remote = call.get("remoteParty") if isinstance(call.get("remoteParty"), dict) else {}
    if not number or number == _tel_number(remote.get("telUri")):
        return None
    return number


def _known_status(status: Any) -> bool:
    return isinstance(status, str) and status in SNAPSHOT_STATES


def _call_id_of(call: Any) -> str:
    value = call.get("callId") if isinstance(call, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value.strip() if isinstance(value, str) else ""


def parse_actions(actions: Any) -> tuple[str, ...]:
    """Allowed actions in ctihub's names, from a list of ``{"action": X}`` or the spec's flattened string."""
    if isinstance(actions, str):
        names = _ACTION_IN_TEXT.findall(actions)
    elif isinstance(actions, list):
        names = [a.get("action") if isinstance(a, dict) else a for a in actions]
    else:
        names = []
    normalised: list[str] = []
    for name in names:
        for action in ACTION_NAMES.get(str(name).upper(), ()):
            if action not in normalised:
                normalised.append(action)
    return tuple(normalised)


def _tel_number(uri: Any) -> str:
    text = _text(uri)
    if text.lower().startswith("tel:"):
        return text[4:].split(";", 1)[0]
    return ""
