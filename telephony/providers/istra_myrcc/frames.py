"""myRCC call-line snapshots into ``CallUpdate`` objects.

Every item is the FULL state of one call line (one extension's leg of a call),
pushed at most every 100 ms when it changed: the same snapshot may come twice
and intermediate states may be skipped, so each one is applied as a state, not
as a transition. ``lastModificationTime`` + ``state`` identifies a snapshot, so
a repeated one is a duplicate.

Times are epoch milliseconds as strings: ``creationTime`` is when the line was
created, ``talkingTime`` when it was answered (a timestamp here, not a duration
as in myCrm). The doc spells the line's extension link three ways.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_timezone

from django.utils import timezone

from telephony import updates as u
from telephony.providers.istra_session import frame_items, read_count, read_flag, read_text
from telephony.updates import CallUpdate, FrameRejected

LINE_URI_PREFIX = "v1/rcc/CallLine/"
EXTENSION_URI_PREFIX = "v1/rcc/Extension/"
EXTENSION_LINK_KEYS = ("extension", "uriExtension", "extensionURI")
EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)

LINE_STATES = {
    "prompting": u.DIALING,  # the agent's own phone is prompted to start an outgoing call
    "talking": u.TALKING,
    "held": u.HELD,
    "dropped": u.ENDED,
}  # and "ringing": RINGING when incoming, else DIALING (the remote rings)

# myRCC's line actions and the normalised names the console and domain use.
ACTION_NAMES = {
    "answer": u.ANSWER,
    "hold": u.HOLD,
    "unhold": u.RESUME,
    "disconnect": u.HANGUP,
    "leave": u.LEAVE,
    "merge": u.MERGE,
    "transfer": u.TRANSFER,
    "redirect": u.REDIRECT,
    "sendDtmfs": u.SEND_DTMF,
    "addParty": u.ADD_PARTY,
}

# The doc only ever shows stateCause "causeNormal"; other causes are recognised
# by the word they contain, and anything else leaves the cause to the domain.
CAUSE_KEYWORDS = (
    ("busy", u.END_BUSY),
    ("noanswer", u.END_NO_ANSWER),
    ("reject", u.END_REJECTED),
    ("transfer", u.END_TRANSFERRED),
    ("unavailable", u.END_UNAVAILABLE),
)


def parse_myrcc_frame(text: str, account_id: int) -> list[CallUpdate]:
    """Every line of a websocket frame or of a GET CallLine list; ``FrameRejected`` if malformed."""
    now = timezone.now()
    return [line_update(item, account_id, now) for item in frame_items(text)]


def line_update(line: dict, account_id: int, now: datetime) -> CallUpdate:
    state_name = read_text(line, "state")
    incoming = read_flag(line, "isIncoming")
    state = _state(state_name, incoming)
    modified = read_text(line, "lastModificationTime")
    answered_at = _epoch_ms(line, "talkingTime")
    return CallUpdate(
        account_id=account_id,
        pbx_call_id=_line_id(line),
        state=state,
        kind=f"callLine.{state_name}",
        payload=line,
        occurred_at=_epoch_ms(line, "lastModificationTime") or now,
        terminal_pbx_id=_extension_id(line),
        direction=None if incoming is None else (u.INBOUND if incoming else u.OUTBOUND),
        # displayed* describe the other party, as shown on the extension's phone.
        remote_number=read_text(line, "displayedNumber"),
        remote_number_e164=_e164_or_none(read_text(line, "displayedExternalNumber")),
        remote_label=read_text(line, "displayedLabel"),
        allowed_actions=_allowed_actions(line),
        started_at=_epoch_ms(line, "creationTime"),
        answered_at=answered_at,
        end_cause=_end_cause(line, incoming, answered_at) if state == u.ENDED else None,
        frame_id=f"{modified}:{state_name}" if modified else None,
    )


def _state(state_name: str | None, incoming: bool | None) -> str:
    if state_name == "ringing":
        return u.RINGING if incoming else u.DIALING
    if state_name not in LINE_STATES:
        raise FrameRejected(f"unknown call-line state {state_name!r}")
    return LINE_STATES[state_name]


def _line_id(line: dict) -> str:
    line_id = read_text(line, "lineId")
    if line_id is None:
        rest_uri = read_text(line, "restUri") or ""
        line_id = rest_uri[len(LINE_URI_PREFIX):] if rest_uri.startswith(LINE_URI_PREFIX) else None
    if not line_id:
        raise FrameRejected("a call line without lineId or restUri")
    return line_id


def _extension_id(line: dict) -> str | None:
    for key in EXTENSION_LINK_KEYS:
        link = read_text(line, key)
        if link is not None:
            return extension_id_from_uri(link)
    return None


def extension_id_from_uri(uri: str) -> str:
    """``v1/rcc/Extension/897778778`` (or a full URL ending so) into ``897778778``."""
    _, marker, extension_id = uri.rpartition(EXTENSION_URI_PREFIX)
    if not marker or not extension_id or "/" in extension_id:
        raise FrameRejected(f"not an extension link: {uri!r}")
    return extension_id


def _allowed_actions(line: dict) -> tuple[str, ...] | None:
    actions = line.get("actions")
    if actions is None:
        return None
    if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
        raise FrameRejected("actions is not a list of names")
    # Actions we cannot drive (startRecord...) are left out.
    return tuple(dict.fromkeys(ACTION_NAMES[a] for a in actions if a in ACTION_NAMES))


def _epoch_ms(line: dict, key: str) -> datetime | None:
    millis = read_count(line, key)
    if not millis:
        return None
    try:
        return EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        raise FrameRejected(f"{key} is not a time: {millis}") from None


def _e164_or_none(number: str | None) -> str | None:
    return number if number and number.startswith("+") else None


def _end_cause(line: dict, incoming: bool | None, answered_at: datetime | None) -> str | None:
    cause = (read_text(line, "stateCause") or "").lower()
    for keyword, end_cause in CAUSE_KEYWORDS:
        if keyword in cause:
            return end_cause
    if cause != "causenormal":
        return None
    if answered_at is not None:
        return u.END_HANGUP
    if incoming is None:
        return None
    # Ended normally before anyone answered: the caller gave up, or we did.
    return u.END_NO_ANSWER if incoming else u.END_CANCELLED
