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

    def __post_init__(self):
        if self.state not in STATES:
            raise FrameRejected(f"unknown call state {self.state!r}")
        if not isinstance(self.pbx_call_id, str) or not self.pbx_call_id:
            raise FrameRejected("a call update needs the PBX's call id as a string")


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
