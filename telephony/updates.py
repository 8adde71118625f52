"""The one normalised shape of "something happened to a call", whatever PBX said it.

Providers turn their frames (myCrm events, myRCC snapshots, Telepo webhooks and
snapshots, End User call history) into ``CallUpdate`` objects; only
``telephony.domain.apply_call_update`` turns those into rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RINGING = "ringing"
DIALING = "dialing"
TALKING = "talking"
HELD = "held"
ENDED = "ended"
STATES = (RINGING, DIALING, TALKING, HELD, ENDED)

INBOUND = "in"
OUTBOUND = "out"

# Normalised end causes (what a person and retailCRM's hangupStatus need to know).
END_HANGUP = "hangup"
END_REJECTED = "rejected"
END_BUSY = "busy"
END_NO_ANSWER = "no_answer"
END_CANCELLED = "cancelled"
END_TRANSFERRED = "transferred"
END_ANSWERED_ELSEWHERE = "answered_elsewhere"
END_UNAVAILABLE = "unavailable"
END_FAILED = "failed"
# Not said by any PBX: the hub ended a call it had heard nothing about for too long (telephony.sweep),
# because the PBX's word on its end was lost (a socket down while it ended, and no history to read).
END_SWEPT = "swept"


class FrameRejected(ValueError):
    """A frame we cannot turn into an update: logged and skipped, never fatal to a socket."""


@dataclass(frozen=True)
class CallUpdate:
    """What one frame says about one call. ``None`` means "the frame did not say"."""

    account_id: int
    pbx_call_id: str
    state: str
    kind: str
    payload: dict[str, Any]
    occurred_at: datetime
    terminal_pbx_id: str | None = None
    direction: str | None = None
    is_internal: bool | None = None
    remote_number: str | None = None
    remote_number_e164: str | None = None
    remote_label: str | None = None
    external_phone: str | None = None
    allowed_actions: tuple[str, ...] | None = None
    state_token: str | None = None
    seq: int | None = None
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ringing_ms: int | None = None
    talking_ms: int | None = None
    end_cause: str | None = None
    # What identifies this frame at the PBX, when it says (myRCC lastModificationTime,
    # Telepo seq_num). Without one, the call's version orders frames instead.
    frame_id: str | None = None
    # Telepo names the local party instead of a terminal: user id, email and number.
    local_party: dict[str, str] = field(default_factory=dict)
    # The PBX's name for a state we do not know ("offering"), as given; ``state`` is then the call's last
    # known one (or a stand-in for a new call). None or "" for a known state: the call's is cleared.
    pbx_state: str | None = None

    def __post_init__(self):
        if self.state not in STATES:
            raise FrameRejected(f"unknown call state {self.state!r}")
        if not isinstance(self.pbx_call_id, str) or not self.pbx_call_id:
            raise FrameRejected("a call update needs the PBX's call id as a string")
        _check_storable(self)


# What the calls table can hold (telephony.models.Call). A frame beyond these is
# rejected here, once for every provider, instead of failing in the database
# (a DataError there would stop the socket that read it).
MAX_ID_LENGTH = 200  # pbx_call_id, terminal ids
MAX_TOKEN_LENGTH = 32  # state_token
MAX_BIGINT = 2**63 - 1
# Display texts are cut to their columns rather than costing the call its event.
TEXT_LIMITS = {
    "remote_number": 200, "remote_label": 200, "remote_number_e164": 32, "external_phone": 32, "pbx_state": 40,
}
EARLIEST, LATEST = datetime(1900, 1, 1), datetime(9000, 1, 1)


def _check_storable(update: CallUpdate) -> None:
    if len(update.pbx_call_id) > MAX_ID_LENGTH:
        raise FrameRejected(f"call id longer than {MAX_ID_LENGTH} characters")
    if update.terminal_pbx_id is not None and (
        not isinstance(update.terminal_pbx_id, str) or len(update.terminal_pbx_id) > MAX_ID_LENGTH
    ):
        raise FrameRejected("terminal id is not a short text")
    if update.state_token is not None and len(update.state_token) > MAX_TOKEN_LENGTH:
        raise FrameRejected(f"state token longer than {MAX_TOKEN_LENGTH} characters")
    for name in ("seq", "ringing_ms", "talking_ms"):
        value = getattr(update, name)
        if value is not None and not 0 <= value <= MAX_BIGINT:
            raise FrameRejected(f"{name} {value} is out of range")
    for name in ("occurred_at", "started_at", "answered_at"):
        value = getattr(update, name)
        if value is not None and not EARLIEST <= value.replace(tzinfo=None) <= LATEST:
            raise FrameRejected(f"{name} {value.isoformat()} is not a plausible time")
    for name, limit in TEXT_LIMITS.items():
        value = getattr(update, name)
        if isinstance(value, str) and len(value) > limit:
            object.__setattr__(update, name, value[:limit])  # frozen, and still being built
    _check_text(update.payload, "payload")
    for name in ("pbx_call_id", "terminal_pbx_id", "remote_number", "remote_number_e164", "remote_label",
                 "external_phone", "state_token", "frame_id", "kind", "pbx_state"):
        _check_text(getattr(update, name), name)
    _check_text(update.local_party, "local_party")


def _check_text(value: Any, where: str) -> None:
    """PostgreSQL stores no NUL character and no lone surrogate, in text or in JSON."""
    if isinstance(value, str):
        if "\x00" in value:
            raise FrameRejected(f"{where} holds a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FrameRejected(f"{where} is not valid Unicode") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, where)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_text(item, where)


# Call-control actions as the console, retailCRM and the domain name them. Each
# provider maps these to its PBX's own names (myRCC "unhold", Telepo "resume"...)
# and reports a call's allowed actions in these names.
ANSWER = "answer"
HOLD = "hold"
RESUME = "resume"
REDIRECT = "redirect"  # blind transfer of this call to a number
TRANSFER = "transfer"  # attended: connect this call to another call of the agent
MERGE = "merge"
ADD_PARTY = "add_party"
SEND_DTMF = "send_dtmf"
HANGUP = "hangup"
LEAVE = "leave"
ALTERNATE = "alternate"
PARK = "park"
PICKUP = "pickup"
MUTE = "mute"
UNMUTE = "unmute"
MOVE = "move"
CONFERENCE_ADD = "conference_add"
CONFERENCE_REMOVE = "conference_remove"
ACTIONS = (
    ANSWER, HOLD, RESUME, REDIRECT, TRANSFER, MERGE, ADD_PARTY, SEND_DTMF, HANGUP, LEAVE,
    ALTERNATE, PARK, PICKUP, MUTE, UNMUTE, MOVE, CONFERENCE_ADD, CONFERENCE_REMOVE,
)
