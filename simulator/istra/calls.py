"""The call model both Istra views look at: call lines and their state machine.

A :class:`Line` is one leg of a call as seen from one extension. myCrm calls it a
call (``callId``) and reports transitions as events; myRCC calls it a call line
(``lineId``) and pushes snapshots of it. Both ids are the same value: a small
negative number as a string, as in the docs (``"-428"``, ``"-5499"``).

States (myRCC doc): ``prompting`` (click-to-call: the platform rings the caller's
own device first), ``ringing`` (incoming: our device rings; outgoing: the far
end is alerted, myCrm's callAlerting), ``talking``, ``held``, ``dropped``.

Every change goes through :meth:`CallBook._enter` (or :meth:`CallBook._touch` for a
change that keeps the state), which checks the transition table and tells the
observers (the myCrm event publisher and the myRCC snapshot pusher) about it.
Nothing here knows about HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from simulator.istra.directory import Directory, Extension

PROMPTING, RINGING, TALKING, HELD, DROPPED = "prompting", "ringing", "talking", "held", "dropped"

# Which state may follow which. talking -> talking is a two-step transfer that
# gives the line a new far end (myCrm talkCause "transferred").
TRANSITIONS: dict[str | None, set[str]] = {
    None: {PROMPTING, RINGING},
    PROMPTING: {RINGING, DROPPED},
    RINGING: {TALKING, DROPPED},
    TALKING: {HELD, TALKING, DROPPED},
    HELD: {TALKING, DROPPED},
    DROPPED: set(),
}

# The applications whose clients may learn of a line (``Line.reported_by``).
REPORTING_APPS = ("myRCC", "myCrm", "myIstra")

# myCrm doc, callDropped.dropCause
# What can be done to a call under way (the control API's ``calls/{id}/{move}``, a traffic script's moves).
CALL_MOVES = ("answer", "hold", "unhold", "hangup")
DROP_CAUSES = ("disconnect", "rejected", "transferred", "busy", "noAnswer", "unavailable", "error")

# The ten myRCC call-line actions (myRCC doc §3.4) and the payload field each needs.
ACTION_PARAMS: dict[str, str | None] = {
    "addParty": "destination",
    "answer": None,
    "disconnect": None,
    "hold": None,
    "unhold": None,
    "leave": None,
    "merge": "line",
    "redirect": "destination",
    "sendDtmfs": "dtmfs",
    "transfer": "line",
}


def now_ms() -> int:
    return int(time.time() * 1000)


class InvalidTransition(Exception):
    pass


class ActionRefused(Exception):
    """The action is not in the line's current ``actions`` list."""

    def __init__(self, line: Line, action: str):
        super().__init__(f"{action} not allowed on {line.line_id} ({line.state})")
        self.line = line
        self.action = action


class BadActionArgument(Exception):
    pass


@dataclass
class Party:
    """The far end as a line displays it."""

    number: str
    label: str = ""
    e164: str = ""
    photo: str = ""
    extension_id: str | None = None  # set when the far end is one of our extensions

    @property
    def internal(self) -> bool:
        return self.extension_id is not None

    @classmethod
    def of_extension(cls, extension: Extension) -> Party:
        return cls(extension.number, extension.label, extension.e164, extension.photo, extension.id)


@dataclass
class Line:
    line_id: str
    extension_id: str
    incoming: bool
    remote: Party
    state: str | None = None
    acd_id: str | None = None
    created_ms: int = field(default_factory=now_ms)
    modified_ms: int = 0
    ringing_since_ms: int | None = None
    ringing_ms: int = 0
    talking_since_ms: int | None = None  # myRCC "talkingTime" is this epoch time, not a duration
    ended_ms: int | None = None
    drop_cause: str | None = None
    peer_id: str | None = None  # the other extension's line of an internal call
    destination: str | None = None  # prompting lines: what to dial once the device answers
    parties: list[Party] = field(default_factory=list)  # added by addParty / merge
    dtmfs: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    # States some client was actually told (pushed on a socket that delivers, listed when a listener was bound,
    # or written to the user's call history): the fault suite's control read-out. A call never reported is one
    # no client could know of. ``reported`` is the union; ``reported_by`` splits it per application.
    reported: list[str] = field(default_factory=list)
    history_ids: dict[str, str] = field(default_factory=dict)  # login -> the call-history entry it became
    reported_by: dict[str, list[str]] = field(default_factory=lambda: {app: [] for app in REPORTING_APPS})

    @property
    def live(self) -> bool:
        return self.state != DROPPED

    def report(self, app: str, state: str | None) -> None:
        """A client of ``app`` was told the line is in ``state``."""
        self.reported_by.setdefault(app, []).append(state or "")
        self.reported.append(state or "")

    @property
    def talking_ms(self) -> int:
        if self.talking_since_ms is None:
            return 0
        # At least 1 ms once answered: a scripted call can go from answer to hangup within
        # the same millisecond, and "0" would read as "never answered".
        return max(1, (self.ended_ms or now_ms()) - self.talking_since_ms)


@dataclass(frozen=True)
class Transition:
    """What observers get: ``before == after`` with no cause is a change that kept the state."""

    line: Line
    before: str | None
    after: str
    cause: str | None = None  # talkCause when entering talking, dropCause when entering dropped


Observer = Callable[[Transition], None]


class CallBook:
    def __init__(self, directory: Directory):
        self.directory = directory
        self.lines: dict[str, Line] = {}  # every line ever, dropped ones too (the control API lists them)
        # The live ones by extension, each in creation order: the myRCC publisher and every line's ``actions``
        # look for an extension's other live lines, and scanning ``lines`` made each event cost more the
        # longer the simulator ran (a benchmark's tens of thousands of calls).
        self._live: dict[str, dict[str, Line]] = {}
        self._live_all: dict[str, Line] = {}
        self.observers: dict[str, Observer] = {}
        self._last_id = -400

    def clear(self) -> None:
        self.lines.clear()
        self._live.clear()
        self._live_all.clear()
        self._last_id = -400

    def observe(self, name: str, observer: Observer) -> None:
        self.observers[name] = observer  # keyed so registering twice is harmless

    def forget(self, line_id: str) -> None:
        """The PBX restarted and forgot the line: gone from every index, with no frame about it."""
        line = self.lines.pop(str(line_id), None)
        if line is None:
            return
        extension_lines = self._live.get(line.extension_id, {})
        extension_lines.pop(line.line_id, None)
        self._live_all.pop(line.line_id, None)
        if not extension_lines:
            self._live.pop(line.extension_id, None)

    # --- reading -----------------------------------------------------------------

    def line(self, line_id: str) -> Line | None:
        return self.lines.get(str(line_id))

    def live_lines(self, extension_id: str | None = None) -> list[Line]:
        """The lines not dropped (of ``extension_id``, or of all), in the order they were created."""
        if extension_id is not None:
            return list(self._live.get(extension_id, {}).values())
        return list(self._live_all.values())

    def actions(self, line: Line) -> list[str]:
        """The myRCC ``actions`` list, shaped on the doc's examples."""
        if line.state == PROMPTING:
            return ["disconnect", "answer"]
        if line.state == RINGING:
            return ["answer", "disconnect", "redirect"] if line.incoming else ["disconnect"]
        if line.state == TALKING:
            actions = ["addParty", "disconnect", "hold", "leave", "redirect"]
            if self._other_live_line(line):
                actions += ["transfer", "merge"]  # only with a second line to join, as in the doc
            return actions + ["sendDtmfs"]
        if line.state == HELD:
            return ["addParty", "disconnect", "unhold", "leave", "redirect"]
        return []

    # --- starting calls --------------------------------------------------------------

    def incoming(self, extension: Extension, caller: Party, acd_id: str | None = None) -> Line:
        """The PBX offers a call to ``extension``: it rings (myCrm callRinging)."""
        caller_ext = self._internal(extension, caller.number)
        caller_line = None
        if caller_ext is not None:
            caller = Party.of_extension(caller_ext)
            caller_line = self._new_line(caller_ext, incoming=False, remote=Party.of_extension(extension))
        line = self._new_line(extension, incoming=True, remote=caller, acd_id=acd_id)
        if caller_line is not None:
            self._pair(caller_line, line)
            self._enter(caller_line, RINGING)
        self._enter(line, RINGING)
        return line

    def outgoing(self, extension: Extension, callee: Party) -> Line:
        """The user dialled on the handset: the far end is alerted (myCrm callAlerting)."""
        callee_ext = self._internal(extension, callee.number)
        if callee_ext is not None:
            callee = Party.of_extension(callee_ext)
        line = self._new_line(extension, incoming=False, remote=callee)
        self._enter(line, RINGING)
        if callee_ext is not None:
            self._ring_internal_callee(line, callee_ext)
        return line

    def place_call(self, extension: Extension, destination: str) -> Line:
        """Click-to-call: the platform first prompts the caller's own device."""
        callee_ext = self._internal(extension, destination)
        remote = Party.of_extension(callee_ext) if callee_ext else Party(destination, "", destination)
        line = self._new_line(extension, incoming=False, remote=remote)
        line.destination = destination
        self._enter(line, PROMPTING)
        return line

    # --- PBX-side and user-side moves ----------------------------------------------

    def answer(self, line: Line) -> None:
        """The party the line is waiting for picks up.

        prompting -> ringing: the caller's device went off-hook, the destination is alerted;
        ringing -> talking: our user (incoming) or the far end (outgoing) answered.
        """
        if line.state == PROMPTING:
            self._enter(line, RINGING)
            callee_ext = self._internal(self._extension(line), line.destination or "")
            if callee_ext is not None:
                self._ring_internal_callee(line, callee_ext)
            return
        self._require(line, RINGING)
        self._enter(line, TALKING, "answer")
        peer = self._peer(line)
        if peer is not None and peer.state == RINGING:
            self._enter(peer, TALKING, "answer")

    def hold(self, line: Line) -> None:
        self._require(line, TALKING)
        self._enter(line, HELD)

    def unhold(self, line: Line) -> None:
        self._require(line, HELD)
        self._enter(line, TALKING, "unHold")

    def hangup(self, line: Line, cause: str = "disconnect") -> None:
        """The call ends: this line and its internal peer drop with ``cause``."""
        if cause not in DROP_CAUSES:
            raise InvalidTransition(f"unknown drop cause {cause!r}; one of {', '.join(DROP_CAUSES)}")
        self._require_live(line)
        self._enter(line, DROPPED, cause)
        peer = self._peer(line)
        if peer is not None and peer.live:
            self._enter(peer, DROPPED, cause)

    # --- myRCC actions -----------------------------------------------------------------

    def act(self, line: Line, action: str, params: dict) -> None:
        """Run a myRCC action, refusing any action missing from ``actions(line)``."""
        if action not in self.actions(line):
            raise ActionRefused(line, action)
        field_name = ACTION_PARAMS[action]
        value = None
        if field_name is not None:
            value = params.get(field_name) if isinstance(params, dict) else None
            if not isinstance(value, str) or not value:
                raise BadActionArgument(f'{action} needs {{"{field_name}": "..."}}')
        getattr(self, f"_act_{action}")(line, value)

    def _act_answer(self, line: Line, _value: None) -> None:
        self.answer(line)

    def _act_disconnect(self, line: Line, _value: None) -> None:
        refused = line.state == RINGING and line.incoming
        self._enter(line, DROPPED, "rejected" if refused else "disconnect")
        peer = self._peer(line)
        if peer is not None and peer.live:
            self._enter(peer, DROPPED, "rejected" if refused else "disconnect")

    def _act_hold(self, line: Line, _value: None) -> None:
        self.hold(line)

    def _act_unhold(self, line: Line, _value: None) -> None:
        self.unhold(line)

    def _act_leave(self, line: Line, _value: None) -> None:
        # Leaving a conference keeps the others connected; leaving a two-party call ends it.
        conference = bool(line.parties)
        self._enter(line, DROPPED, "disconnect")
        peer = self._peer(line)
        if peer is not None and peer.live and not conference:
            self._enter(peer, DROPPED, "disconnect")

    def _act_redirect(self, line: Line, destination: str) -> None:
        """Blind transfer: the far end goes to ``destination``; our leg drops as transferred."""
        extension = self._extension(line)
        target = self._internal(extension, destination)
        peer = self._peer(line)
        self._enter(line, DROPPED, "transferred")
        if target is not None and target.id != extension.id:
            new_line = self._new_line(target, incoming=True, remote=line.remote, acd_id=line.acd_id)
            if peer is not None:
                self._pair(peer, new_line)
            self._enter(new_line, RINGING)
        if peer is not None and peer.live:
            peer.remote = Party.of_extension(target) if target else Party(destination, "", destination)
            if target is None:
                peer.peer_id = None
            self._touch(peer)

    def _act_sendDtmfs(self, line: Line, dtmfs: str) -> None:  # noqa: N802 - the doc's action name
        line.dtmfs.append(dtmfs)  # no state change, so nothing is pushed

    def _act_addParty(self, line: Line, destination: str) -> None:  # noqa: N802
        line.parties.append(Party(destination, "", destination))
        self._touch(line)

    def _act_merge(self, line: Line, other_ref: str) -> None:
        """Conference: the other line's far end joins this line; the other leg is absorbed."""
        other = self._other_line_from_ref(line, other_ref)
        line.parties.append(other.remote)
        other_peer = self._peer(other)
        self._enter(other, DROPPED, "transferred")
        if other_peer is not None and other_peer.live:
            other_peer.peer_id = line.line_id
        self._touch(line)

    def _act_transfer(self, line: Line, other_ref: str) -> None:
        """Two-step transfer: our two far ends are joined; both our legs drop as transferred."""
        other = self._other_line_from_ref(line, other_ref)
        peer, other_peer = self._peer(line), self._peer(other)
        self._enter(line, DROPPED, "transferred")
        self._enter(other, DROPPED, "transferred")
        for near, far_line, far_party in ((peer, other_peer, other.remote), (other_peer, peer, line.remote)):
            if near is None or not near.live:
                continue
            near.remote = far_party
            near.peer_id = far_line.line_id if far_line is not None else None
            if near.state in (TALKING, HELD):
                self._enter(near, TALKING, "transferred")
            else:
                self._touch(near)

    # --- internals ---------------------------------------------------------------------

    def _new_line(self, extension: Extension, incoming: bool, remote: Party, acd_id: str | None = None) -> Line:
        self._last_id -= 1
        line = Line(str(self._last_id), extension.id, incoming, remote, acd_id=acd_id)
        self.lines[line.line_id] = line
        self._live.setdefault(line.extension_id, {})[line.line_id] = line
        self._live_all[line.line_id] = line
        return line

    def _ring_internal_callee(self, caller_line: Line, callee_ext: Extension) -> None:
        caller_ext = self._extension(caller_line)
        callee_line = self._new_line(callee_ext, incoming=True, remote=Party.of_extension(caller_ext))
        self._pair(caller_line, callee_line)
        self._enter(callee_line, RINGING)

    def _pair(self, a: Line, b: Line) -> None:
        a.peer_id, b.peer_id = b.line_id, a.line_id

    def _peer(self, line: Line) -> Line | None:
        return self.lines.get(line.peer_id) if line.peer_id else None

    def _extension(self, line: Line) -> Extension:
        extension = self.directory.extension(line.extension_id)
        if extension is None:  # removed from the directory while a call was up
            return Extension(line.extension_id, "", enterprise="")
        return extension

    def _internal(self, extension: Extension, number: str) -> Extension | None:
        return self.directory.by_number(extension.enterprise, number) if number else None

    def _other_live_line(self, line: Line) -> Line | None:
        for other in self.live_lines(line.extension_id):
            if other is not line:
                return other
        return None

    def _other_line_from_ref(self, line: Line, ref: str) -> Line:
        # The payload names the line by its URI ("v1/rcc/CallLine/-2898"); a bare id is accepted too.
        other = self.line(ref.rstrip("/").rsplit("/", 1)[-1])
        if other is None or other is line or not other.live or other.extension_id != line.extension_id:
            raise BadActionArgument(f"line {ref!r} is not another live call line of this extension")
        return other

    def _require(self, line: Line, state: str) -> None:
        if line.state != state:
            raise InvalidTransition(f"call {line.line_id} is {line.state}, not {state}")

    def _require_live(self, line: Line) -> None:
        if not line.live:
            raise InvalidTransition(f"call {line.line_id} is already dropped")

    def _enter(self, line: Line, state: str, cause: str | None = None) -> None:
        before = line.state
        if state not in TRANSITIONS[before]:
            raise InvalidTransition(f"call {line.line_id}: {before} -> {state} is not a valid transition")
        now = now_ms()
        if before == RINGING and line.ringing_since_ms is not None:
            line.ringing_ms += now - line.ringing_since_ms
            line.ringing_since_ms = None
        if state == RINGING:
            line.ringing_since_ms = now
        if state == TALKING and line.talking_since_ms is None:
            line.talking_since_ms = now
        if state == DROPPED:
            line.ended_ms = now
            line.drop_cause = cause
            extension_lines = self._live.get(line.extension_id, {})
            extension_lines.pop(line.line_id, None)
            self._live_all.pop(line.line_id, None)
            if not extension_lines:
                self._live.pop(line.extension_id, None)
        line.state = state
        line.modified_ms = now
        line.history.append(state)
        self._notify(Transition(line, before, state, cause))

    def _touch(self, line: Line) -> None:
        line.modified_ms = now_ms()
        self._notify(Transition(line, line.state, line.state))

    def _notify(self, transition: Transition) -> None:
        for observer in list(self.observers.values()):
            observer(transition)
