"""myRCC call-line snapshots into ``CallUpdate`` objects.

Every item is the FULL state of one call line (one extension's leg of a call),
pushed at most every 100 ms when it changed: the same snapshot may come twice
and intermediate states may be skipped, so each one is applied as a state, not
as a transition. ``lastModificationTime`` + ``state`` + the line's actions
identify a snapshot, so a repeated one is a duplicate. The actions are in it
because a line's actions change with its siblings' (a second line brings
transfer and merge), and nothing says its modification time moves with them.

Times are epoch milliseconds as strings: ``creationTime`` is when the line was
created, ``talkingTime`` when it was answered (a timestamp here, not a duration
as in myCrm). The doc spells the line's extension link three ways.

The doc only ever shows the states ``prompting``, ``talking``, ``held`` and
``dropped``; an incoming line that rings is never shown. ``ringing`` is our
guess from myCrm, whose events are named after the same states (callTalking,
callHeld, callDropped): its two ringing events are callRinging and callAlerting,
so ``ringing`` and ``alerting`` both read as ringing; without ``isIncoming``,
``ringing`` is an incoming line and ``alerting`` the far end of one we dialled,
as myCrm's one example has it (``istra_mycrm.frames``). Any other state
(``offering``, ``proceeding``...) is not guessed at: the line is still applied,
the call stays live in the state it had (a line seen for the first time in such
a state rings when incoming, else dials), the raw name stays on the call's event
(kind ``callLine.<state>``, payload ``state``) and on the call (``pbx_state``,
which the card shows), and the value is logged once per account. A line without
an id or a state is skipped alone: the other lines of the frame, or of the
catch-up list after a reconnect, still apply. Any other field that cannot be read
(a time of "-1", an ``isIncoming`` of "maybe", a ``null`` among the actions) is
taken as absent and logged once per account and reason: the snapshot still applies.
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from django.utils import timezone

from telephony import updates as u
from telephony.providers import unexpected
from telephony.providers.istra.framing import OptionalFields, frame_items, read_count, read_text
from telephony.updates import CallUpdate, FrameRejected

logger = logging.getLogger(__name__)

LINE_URI_PREFIX = "v1/rcc/CallLine/"
EXTENSION_URI_PREFIX = "v1/rcc/Extension/"
EXTENSION_LINK_KEYS = ("extension", "uriExtension", "extensionURI")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

LINE_STATES = {
    "prompting": u.DIALING,  # the agent's own phone is prompted to start an outgoing call
    "talking": u.TALKING,
    "held": u.HELD,
    "dropped": u.ENDED,
}
# Ringing states: RINGING when the line is incoming, else DIALING (the remote rings). Without
# isIncoming, myCrm's plain reading of its two event names decides (is the line incoming?).
RING_STATES = {"ringing": True, "alerting": False}

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


class LineStates:
    """The normalised state each live line was last given, so a snapshot in an unknown state keeps it.

    One per listener connection (the provider's), filled from the calls the database holds live
    when it connects and from every line it parses after that. Bounded: a line never seen
    dropping is forgotten after ``limit`` newer ones.

    It also holds the enterprise's extension numbers (``extension_numbers``, the directory as last
    synced, read at connect): a line has no type, and the doc's calls between colleagues show the
    other extension's short number as ``displayedNumber`` (101 calls 102). A line whose other party
    is one of them is internal, so retailCRM gets no pop-up and no history row for it.
    """

    def __init__(self, limit: int = 10_000):
        self.limit = limit
        self._states: OrderedDict[str, str] = OrderedDict()
        self.extension_numbers: frozenset[str] = frozenset()

    def is_internal(self, number: str | None) -> bool | None:
        """True when ``number`` is one of the enterprise's extensions; None when that cannot be told."""
        if not number or not self.extension_numbers:
            return None
        return number in self.extension_numbers

    def get(self, line_id: str) -> str | None:
        return self._states.get(line_id)

    def remember(self, line_id: str, state: str) -> None:
        if state == u.ENDED:
            self._states.pop(line_id, None)
            return
        self._states[line_id] = state
        self._states.move_to_end(line_id)
        while len(self._states) > self.limit:
            self._states.popitem(last=False)

    def remember_all(self, states: dict[str, str]) -> None:
        for line_id, state in states.items():
            self.remember(line_id, state)


def parse_myrcc_frame(text: str, account_id: int, lines: LineStates | None = None) -> list[CallUpdate]:
    """Every readable line of a websocket frame or of a GET CallLine list.

    ``FrameRejected`` only when the frame itself is not a list of lines; a line without an id or a
    state is logged and skipped, and the others apply.
    """
    now = timezone.now()
    updates = []
    for item in frame_items(text):
        try:
            update = line_update(item, account_id, now, lines)
        except FrameRejected as exc:
            unexpected.warn_once(logger, account_id, "myRCC line", str(exc), "myRCC call line skipped: %s", exc)
            continue
        if lines is not None:
            lines.remember(update.pbx_call_id, update.state)
        updates.append(update)
    return updates


def line_update(line: dict, account_id: int, now: datetime, lines: LineStates | None = None) -> CallUpdate:
    """One call line's snapshot; ``FrameRejected`` without an id or a state, its other fields optional."""
    fields = OptionalFields(line)
    line_id = line_id_of(line)
    state_name = read_text(line, "state")
    incoming = fields.flag("isIncoming")
    state = _state(state_name, incoming)
    known_state = state is not None
    if not known_state:
        state = _kept_state(line_id, incoming, lines)
    modified = fields.text("lastModificationTime")
    remote_number = fields.text("displayedNumber")
    allowed_actions = _allowed_actions(fields)
    answered_at = fields.read(_epoch_ms, line, "talkingTime")
    update = CallUpdate(
        account_id=account_id,
        pbx_call_id=line_id,
        state=state,
        kind=f"callLine.{state_name}",
        payload=line,
        occurred_at=fields.read(_epoch_ms, line, "lastModificationTime") or now,
        terminal_pbx_id=fields.read(_extension_id, line),
        direction=None if incoming is None else (u.INBOUND if incoming else u.OUTBOUND),
        is_internal=lines.is_internal(remote_number) if lines is not None else None,
        # displayed* describe the other party, as shown on the extension's phone.
        remote_number=remote_number,
        remote_number_e164=_e164_or_none(fields.text("displayedExternalNumber")),
        remote_label=fields.text("displayedLabel"),
        allowed_actions=allowed_actions,
        started_at=fields.read(_epoch_ms, line, "creationTime"),
        answered_at=answered_at,
        end_cause=_end_cause(fields, incoming, answered_at) if state == u.ENDED else None,
        frame_id=f"{modified}:{state_name}:{_actions_tag(allowed_actions)}" if modified else None,
        pbx_state=None if known_state else state_name,  # the card shows it next to the state kept
    )
    if not known_state:
        unexpected.warn_once(
            logger, account_id, "myRCC state", state_name,
            "myRCC sent call-line state %s, which the spec does not show: line %s is kept %s",
            unexpected.shown(state_name), line_id, state,
        )
    fields.say(logger, account_id, "myRCC", "line %s (%s)", line_id, state_name)
    return update


def _state(state_name: str | None, incoming: bool | None) -> str | None:
    """The normalised state of a state we know; None for one the spec does not show."""
    if state_name is None:
        raise FrameRejected("a call line without a state")
    if state_name in RING_STATES:
        return u.RINGING if (RING_STATES[state_name] if incoming is None else incoming) else u.DIALING
    return LINE_STATES.get(state_name)


def _kept_state(line_id: str, incoming: bool | None, lines: LineStates | None) -> str:
    """An unknown state keeps the call live as it was; a line first seen so rings (or dials when outgoing).

    Without ``isIncoming`` it rings: the domain takes a call of unknown direction as inbound.
    """
    known = lines.get(line_id) if lines is not None else None
    if known is not None:
        return known
    return u.DIALING if incoming is False else u.RINGING


def line_id_of(line: dict) -> str:
    """The line's id, from ``lineId`` or else its ``restUri``; ``FrameRejected`` without either."""
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
    """``v1/rcc/Extension/897778778`` (or a full URL ending so, a trailing slash too) into ``897778778``."""
    _, marker, extension_id = uri.rstrip("/").rpartition(EXTENSION_URI_PREFIX)
    if not marker or not extension_id or "/" in extension_id:
        raise FrameRejected(f"not an extension link: {uri!r}")
    return extension_id


def _allowed_actions(fields: OptionalFields) -> tuple[str, ...] | None:
    actions = fields.item.get("actions")
    if actions is None:
        return None
    if not isinstance(actions, list):
        fields.unread.append(f"actions is not a list: {unexpected.shown(actions)}")
        return None
    if not all(isinstance(a, str) for a in actions):
        # The names that are names still say what the line allows; a null among them says nothing.
        fields.unread.append("actions holds something that is not a name")
    # Actions we cannot drive (startRecord...) are left out.
    return tuple(dict.fromkeys(ACTION_NAMES[a] for a in actions if isinstance(a, str) and a in ACTION_NAMES))


def _actions_tag(actions: tuple[str, ...] | None) -> str:
    """A short tag of the line's actions for its frame id: 8 hex digits, the same for the same actions."""
    return f"{zlib.crc32(','.join(actions or ()).encode()):08x}" if actions is not None else "-"


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


def _end_cause(fields: OptionalFields, incoming: bool | None, answered_at: datetime | None) -> str | None:
    cause = (fields.text("stateCause") or "").lower()
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
