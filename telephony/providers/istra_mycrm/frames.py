"""myCrm websocket frames into ``CallUpdate`` objects.

A frame is ``{"listenerName": .., "item": [{"event": "callRinging", "callId": .., ..}]}``
on one terminal's listener. Events are transitions of that terminal's leg:

* ``callAlerting`` and ``callRinging`` are the two ringing events. The doc does
  not say which is which, and its field lists for them have no direction; its
  one example shows ``callRinging`` with ``incoming`` true. So the ``incoming``
  flag decides when the frame has it (incoming: RINGING, else DIALING), and
  without it the example does: ``callRinging`` is our phone ringing (an incoming
  call), ``callAlerting`` the remote alerting for a call we dialled (as CSTA names
  the far end's ringing). The other reading sent every flagless incoming call to
  retailCRM as an "out" event and filed it, unanswered, as a cancelled call.
* ``callTalking``, ``callHeld``, ``callDropped``.

``ringingTime`` and ``talkingTime`` are durations in milliseconds, sent as strings.
Frames carry no time, so they are dated when read.

The doc's field lists spell the direction ``Incoming`` (on callTalking and
callDropped) and its examples ``incoming``: both are read, the example's first.
``talkCause`` (answer/unHold, and "transferred" in the example) says why a call
talks, and names its event: ``callTalking.answer``, ``callTalking.unHold`` (a
resume, not an answer), ``callTalking.transferred``. The state is talking all
the same; another cause keeps the plain ``callTalking`` and is logged once.

An event name the doc does not list is skipped and logged once per account and
name; so is an item without an event name or a ``callId``. The other items of the
frame apply. Any other field that cannot be read (a ``ringingTime`` of "-1", an
``Incoming`` of "maybe", a number that is not text) is taken as absent and logged
once per account and reason: the event still applies, so a drop still ends its call.

A ``callDropped`` whose ``talkingTime`` is above 0 was answered, even when no
``callTalking`` came before it: the PBX sends nothing again for a call answered
while our socket was down, and after the reconnect only the drop arrives. Its
answer time is the end minus the talking time.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone

from telephony import updates as u
from telephony.providers import unexpected
from telephony.providers.istra.framing import OptionalFields, frame_items, read_text
from telephony.updates import CallUpdate, FrameRejected

logger = logging.getLogger(__name__)

# Whether a ringing event without an ``incoming`` flag is an incoming call.
RING_EVENTS = {"callRinging": True, "callAlerting": False}
EVENT_STATES = {"callTalking": u.TALKING, "callHeld": u.HELD, "callDropped": u.ENDED}

DROP_CAUSES = {
    "rejected": u.END_REJECTED,
    "transferred": u.END_TRANSFERRED,
    "busy": u.END_BUSY,
    "noAnswer": u.END_NO_ANSWER,
    "unavailable": u.END_UNAVAILABLE,
    "error": u.END_FAILED,
}

CALL_TYPES = {"internal": True, "external": False}

# callTalking's talkCause: the doc lists answer and unHold, its example shows transferred.
TALK_CAUSES = ("answer", "unHold", "transferred")


class UnknownEvent(Exception):
    """An event name the doc does not list: the item is skipped, the frame's others apply."""


def parse_mycrm_frame(text: str, account_id: int, terminal_pbx_id: str | None) -> list[CallUpdate]:
    """Every readable call event of one frame.

    ``FrameRejected`` only when the frame itself is not a list of items; an item without an event
    name or a call id, or naming an event the doc does not list, is logged and skipped.
    """
    now = timezone.now()
    updates = []
    for item in frame_items(text):
        try:
            updates.append(_event_update(item, account_id, terminal_pbx_id, now))
        except UnknownEvent as exc:
            event = exc.args[0]
            unexpected.warn_once(logger, account_id, "myCrm event", event,
                                 "myCrm sent event %s, which the doc does not list: skipped", unexpected.shown(event))
        except FrameRejected as exc:
            unexpected.warn_once(logger, account_id, "myCrm item", str(exc), "myCrm event skipped: %s", exc)
    return updates


def _event_update(item: dict, account_id: int, terminal_pbx_id: str | None, now) -> CallUpdate:
    fields = OptionalFields(item)
    update = _read_event(item, fields, account_id, terminal_pbx_id, now)
    fields.say(logger, account_id, "myCrm", "%s of call %s", update.kind, update.pbx_call_id)
    return update


def _read_event(item: dict, fields: OptionalFields, account_id: int, terminal_pbx_id: str | None,
                now) -> CallUpdate:
    event = read_text(item, "event")
    if event is None:
        raise FrameRejected("an item without an event name")
    if event not in RING_EVENTS and event not in EVENT_STATES:
        raise UnknownEvent(event)
    call_id = read_text(item, "callId")
    if call_id is None:
        raise FrameRejected(f"{event} without a callId")
    incoming = _incoming(fields)
    if event in RING_EVENTS:
        incoming = RING_EVENTS[event] if incoming is None else incoming
        state = u.RINGING if incoming else u.DIALING
    else:
        state = EVENT_STATES[event]
    talk_cause = _talk_cause(item) if state == u.TALKING else None
    number_e164 = fields.text("displayNumberE164")
    talking_ms = fields.count("talkingTime")
    answered_at = _answered_at(now, talking_ms) if state == u.ENDED else None
    if talk_cause is not None and talk_cause not in TALK_CAUSES:
        unexpected.warn_once(logger, account_id, "myCrm talkCause", talk_cause,
                             "myCrm sent talkCause %s, which the doc does not list", unexpected.shown(talk_cause))
    return CallUpdate(
        account_id=account_id,
        pbx_call_id=call_id,
        state=state,
        kind=f"{event}.{talk_cause}" if talk_cause in TALK_CAUSES else event,
        payload=item,
        occurred_at=now,
        terminal_pbx_id=terminal_pbx_id,
        direction=None if incoming is None else (u.INBOUND if incoming else u.OUTBOUND),
        is_internal=_is_internal(fields),
        remote_number=fields.text("displayNumber"),
        # Istra fills displayNumberE164 with the short extension for internal calls.
        remote_number_e164=number_e164 if number_e164 and number_e164.startswith("+") else None,
        remote_label=fields.text("displayLabel"),
        external_phone=fields.text("acdId"),
        ringing_ms=fields.count("ringingTime"),
        talking_ms=talking_ms,
        answered_at=answered_at,
        end_cause=_end_cause(fields, incoming, talking_ms) if state == u.ENDED else None,
    )


# No call talks for a month: a longer talkingTime is garbage, but still says "answered".
MAX_PLAUSIBLE_TALK = timedelta(days=31)


def _answered_at(dropped_at, talking_ms: int | None):
    if not talking_ms:
        return None
    talked = timedelta(milliseconds=min(talking_ms, MAX_PLAUSIBLE_TALK // timedelta(milliseconds=1)))
    return dropped_at - talked


def _talk_cause(item: dict) -> str | None:
    # Only names the event: a cause that is not text costs nothing but the name.
    cause = item.get("talkCause")
    return cause if isinstance(cause, str) and cause else None


def _incoming(fields: OptionalFields) -> bool | None:
    """``incoming`` as in the doc's examples, else ``Incoming`` as in its field lists."""
    incoming = fields.flag("incoming")
    return fields.flag("Incoming") if incoming is None else incoming


def _is_internal(fields: OptionalFields) -> bool | None:
    # An undocumented type must not cost us the event (a lost callDropped leaves a call ringing).
    return CALL_TYPES.get(fields.text("type"))


def _end_cause(fields: OptionalFields, incoming: bool | None, talking_ms: int | None) -> str | None:
    """Why the call ended; None leaves it to the domain (which knows if it was answered)."""
    cause = fields.text("dropCause")
    if cause in DROP_CAUSES:
        return DROP_CAUSES[cause]
    if cause != "disconnect" or talking_ms is None:
        return None  # an undocumented cause still ends the call
    if talking_ms > 0:
        return u.END_HANGUP
    # Hung up before anyone answered: the caller gave up (a missed call for us),
    # or we gave up on our own outgoing call.
    if incoming is None:
        return None
    return u.END_NO_ANSWER if incoming else u.END_CANCELLED
