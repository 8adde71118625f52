"""What the End User API (myIstra) sends, read into plain values.

* Voicemail objects (``v1/logs/Voicemail/bean``) into :class:`Voicemail`.
* Call-history entries (``v1/logs/Phone/bean``) into :class:`HistoryEntry`, and
  those into the ``CallUpdate`` the backfill applies (one ended call per entry).
* Notification frames and snapshots (``v1/logs/Notifications/bean``) into
  :class:`Counters`. A snapshot is the bare counters object; a websocket frame is
  ``{"listenerName": .., "item": {<counters>}}`` (the doc says ``item`` is an object;
  a list of one is read too, like the other Istra frames).

Reading around the damage in the document (its call-history table lost rows):

* the remote party's number is ``remoteNumber`` (as in a voicemail), else
  ``callbackNumber``, the key whose description ("the number to dial in order to
  reach the caller") survived under ``timestamp``;
* ``timestamp`` is a UNIX time as a string, in seconds like the voicemail's; a
  value above 10^11 is taken as milliseconds.

Ids stay strings (64-bit values must not pass through a float).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from telephony import updates as u
from telephony.providers.istra.framing import OptionalFields, read_count, read_flag, read_text
from telephony.providers.times import from_epoch
from telephony.updates import CallUpdate, FrameRejected

COUNTERS_MODEL = "v1/data/RestletApiSessionCounters"
COUNTER_KEYS = ("unreadMissedCalls", "unreadVoiceMails", "unreadTextMessages")
HISTORY_KIND = "callHistory"
# A live call of a socket (myCrm, myRCC) that the call history says has ended: see history_end_update.
HISTORY_ENDED_KIND = "history.ended"
HISTORY_CALL_PREFIX = "history:"
# remoteType values that are somebody on the platform, not a customer.
INTERNAL_REMOTE_TYPES = frozenset({
    "STATION", "REMOTE_STATION", "GROUP", "ACD_GROUP", "PAGING_GROUP", "VOICEMAIL", "MEDIASERVER", "SPEEDDIAL",
    "MOBILE_STATION",
})
# A ring or talk time past this is not a call (and would overflow the times derived from it).
MAX_CALL_SECONDS = 7 * 86400
AUDIO_FORMATS = {"ogg": "application/ogg", "aac": "application/mp4", "mp4": "application/mp4", "au": "application/au"}


def _loads(text: str):
    try:
        return json.loads(text, parse_int=str, parse_float=str)
    except (TypeError, ValueError) as exc:
        raise FrameRejected(f"not JSON: {exc}") from None
    except RecursionError:  # nested deeper than the decoder goes
        raise FrameRejected("not JSON: nested too deeply") from None


def read_time(item: dict, key: str) -> datetime | None:
    value = read_text(item, key) if not isinstance(item.get(key), int) else str(item[key])
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 15:
        raise FrameRejected(f"{key} is not a UNIX time: {value[:40]!r}")
    at = from_epoch(int(value))
    if at is None:  # past what a datetime (or the platform) can hold
        raise FrameRejected(f"{key} is not a UNIX time: {value!r}")
    return at


def _count(item: dict, key: str) -> int | None:
    value = item.get(key)
    return read_count(item, key) if not isinstance(value, int) or isinstance(value, bool) else max(0, value)


# --- counters -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Counters:
    unread_missed_calls: int
    unread_voicemails: int
    unread_text_messages: int

    def as_message(self) -> dict:
        return {"unreadMissedCalls": self.unread_missed_calls, "unreadVoiceMails": self.unread_voicemails,
                "unreadTextMessages": self.unread_text_messages}


def parse_counters(data) -> Counters:
    if not isinstance(data, dict):
        raise FrameRejected("the counters are a JSON object")
    model = data.get("model")
    if model is not None and model != COUNTERS_MODEL:
        raise FrameRejected(f"not a counters object: model {model!r}")
    values = {key: _count(data, key) for key in COUNTER_KEYS}
    if all(v is None for v in values.values()):
        raise FrameRejected("a counters object without any counter")
    return Counters(values["unreadMissedCalls"] or 0, values["unreadVoiceMails"] or 0, values["unreadTextMessages"] or 0)


def parse_notification_frame(text: str) -> Counters | None:
    """The counters a frame or snapshot carries; None for a frame that is not about counters."""
    data = _loads(text)
    if not isinstance(data, dict):
        raise FrameRejected("a myIstra frame is a JSON object")
    if "item" not in data:
        if data.get("model") == COUNTERS_MODEL or any(key in data for key in COUNTER_KEYS):
            return parse_counters(data)  # the GET snapshot (the bind answer)
        # Not a listener's frame and no counters: a platform answering our keep-alive ({"keepalive": "true"}),
        # say. Rejected, it was a warning every keep-alive period for every listener.
        return None
    item = data["item"]
    if isinstance(item, list):
        if len(item) != 1:
            raise FrameRejected("a notification frame carries one counters object")
        item = item[0]
    if isinstance(item, dict) and item.get("model") not in (None, COUNTERS_MODEL):
        return None  # another listener's resource: not ours to read
    return parse_counters(item)


# --- voicemail --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Voicemail:
    id: str
    received_at: datetime | None
    duration_seconds: int
    remote_number: str
    remote_label: str
    internal: bool
    read: bool
    play_number: str
    callback_number: str
    priority: str

    def as_json(self) -> dict:
        return {
            "id": self.id, "received_at": self.received_at.isoformat() if self.received_at else None,
            "duration": self.duration_seconds, "remote_number": self.remote_number,
            "remote_label": self.remote_label, "internal": self.internal, "read": self.read,
            "callback_number": self.callback_number, "priority": self.priority,
            "can_play_by_phone": bool(self.play_number),
        }


def parse_voicemail(item, unread: list[str] | None = None) -> Voicemail:
    """A voicemail; ``FrameRejected`` only without an object or an id.

    Any other field that cannot be read (a ``type`` sent as the JSON flag the doc's
    words suggest, a ``priority`` as a number, a ``durationSecond`` of 12.5) is taken
    as absent and its reason added to ``unread``: one odd field must not cost the
    message, nor the box its list.
    """
    if not isinstance(item, dict):
        raise FrameRejected("a voicemail is a JSON object")
    voicemail_id = read_text(item, "id")
    if voicemail_id is None:
        raise FrameRejected("a voicemail without an id")
    fields = OptionalFields(item)
    remote_number = fields.text("remoteNumber") or ""
    voicemail = Voicemail(
        id=voicemail_id,
        received_at=fields.read(read_time, item, "timestamp"),
        duration_seconds=fields.read(_count, item, "durationSecond") or 0,
        remote_number=remote_number,
        remote_label=fields.text("remoteLabel") or "",
        internal=_voicemail_internal(fields),
        read=bool(fields.flag("read")),
        play_number=fields.text("playNumber") or "",
        callback_number=fields.text("callbackNumber") or remote_number,
        # "Sometimes set by the caller", a legacy of the IVR: shown as given, a number too.
        priority=str(item["priority"]) if isinstance(item.get("priority"), (str, int, float)) else "",
    )
    if unread is not None:
        unread.extend(fields.unread)
    return voicemail


def _voicemail_internal(fields: OptionalFields) -> bool:
    """``type``: "internal"/"external" as the examples write it, or the flag the doc's words call it (true: internal)."""
    value = fields.item.get("type")
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
        return bool(fields.flag("type"))
    return (fields.text("type") or "").lower() == "internal"


# --- call history -------------------------------------------------------------------------------

@dataclass(frozen=True)
class HistoryEntry:
    id: str
    started_at: datetime
    incoming: bool
    missed: bool
    remote_number: str
    remote_label: str
    remote_type: str
    ring_seconds: int
    talk_seconds: int
    user_number: str
    payload: dict

    @property
    def internal(self) -> bool:
        return self.remote_type in INTERNAL_REMOTE_TYPES

    @property
    def answered_at(self) -> datetime | None:
        return None if self.missed else self.started_at + timedelta(seconds=self.ring_seconds)

    @property
    def ended_at(self) -> datetime:
        return self.started_at + timedelta(seconds=self.ring_seconds + (0 if self.missed else self.talk_seconds))


def parse_history_entry(item) -> HistoryEntry:
    if not isinstance(item, dict):
        raise FrameRejected("a call-history entry is a JSON object")
    entry_id = read_text(item, "callHistoryId")
    if entry_id is None:
        uri = read_text(item, "restUri") or ""
        entry_id = uri.rstrip("/").rsplit("/", 1)[-1] if uri.startswith("v1/logs/Phone/bean/") else None
    if not entry_id:
        raise FrameRejected("a call-history entry without callHistoryId")
    started_at = read_time(item, "timestamp")
    if started_at is None:
        raise FrameRejected(f"call-history entry {entry_id} has no timestamp")
    incoming, missed = read_flag(item, "isIncoming"), read_flag(item, "isMissed")
    if incoming is None or missed is None:
        raise FrameRejected(f"call-history entry {entry_id} does not say isIncoming and isMissed")
    ring_seconds, talk_seconds = _count(item, "ringDurationSecond") or 0, _count(item, "talkDurationSecond") or 0
    if max(ring_seconds, talk_seconds) > MAX_CALL_SECONDS:
        raise FrameRejected(f"call-history entry {entry_id} lasted longer than any call")
    return HistoryEntry(
        id=entry_id,
        started_at=started_at,
        incoming=incoming,
        missed=missed,
        remote_number=read_text(item, "remoteNumber") or read_text(item, "callbackNumber") or "",
        remote_label=read_text(item, "remoteLabel") or "",
        remote_type=(read_text(item, "remoteType") or "UNKNOWN").upper(),
        ring_seconds=ring_seconds,
        talk_seconds=talk_seconds,
        user_number=read_text(item, "userNumber") or "",
        payload=item,
    )


def history_call_id(entry_id: str) -> str:
    """The call id a backfilled entry gets: its own namespace, never a socket's call id."""
    return f"{HISTORY_CALL_PREFIX}{entry_id}"


def history_updates(entry: HistoryEntry, account_id: int, terminal_pbx_id: str | None) -> list[CallUpdate]:
    """The updates that tell the domain about the ended call an entry stands for.

    An answered call needs a talking update first: the domain only derives
    ``answered_at`` from a talking (or held) state. Apply them in one transaction,
    so nothing downstream ever sees the call live.
    """
    label = entry.remote_label if entry.remote_label and entry.remote_label != entry.remote_number else ""
    common = dict(
        account_id=account_id,
        pbx_call_id=history_call_id(entry.id),
        kind=HISTORY_KIND,
        payload=entry.payload,
        terminal_pbx_id=terminal_pbx_id,
        direction=u.INBOUND if entry.incoming else u.OUTBOUND,
        is_internal=entry.internal,
        remote_number=entry.remote_number or None,
        remote_label=label,
        started_at=entry.started_at,
    )
    updates = []
    if not entry.missed:
        updates.append(CallUpdate(state=u.TALKING, occurred_at=entry.answered_at, answered_at=entry.answered_at,
                                  frame_id="history-answered", **common))
    updates.append(CallUpdate(
        state=u.ENDED,
        occurred_at=entry.ended_at,
        answered_at=entry.answered_at,
        ringing_ms=entry.ring_seconds * 1000,
        talking_ms=0 if entry.missed else entry.talk_seconds * 1000,
        end_cause=u.END_NO_ANSWER if entry.missed else u.END_HANGUP,
        frame_id="history",
        **common,
    ))
    return updates


def history_end_update(entry: HistoryEntry, account_id: int, pbx_call_id: str) -> CallUpdate:
    """The update that ends a socket's call (``account_id``, ``pbx_call_id``) the entry says has ended.

    The socket saw the call begin but never end (it was down when the PBX ended it). The
    entry's times and outcome are read as for a backfilled call (``history_updates``):
    answered unless missed, at the end minus the talk time. The frame id is the
    entry's, so ending the same call from the same entry again is a replay.
    """
    return CallUpdate(
        account_id=account_id,
        pbx_call_id=pbx_call_id,
        state=u.ENDED,
        kind=HISTORY_ENDED_KIND,
        payload=entry.payload,
        occurred_at=entry.ended_at,
        answered_at=entry.answered_at,
        ringing_ms=entry.ring_seconds * 1000,
        talking_ms=0 if entry.missed else entry.talk_seconds * 1000,
        # Left to the domain: hangup once answered (by the entry, or as the socket saw it), else no answer.
        end_cause=None,
        frame_id=history_call_id(entry.id),
    )
