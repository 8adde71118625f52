"""A traffic script: call moves the platform plays by itself, each at the time it names.

A real PBX makes its calls on its own; the control API's ``calls/incoming`` and
``calls/{id}/answer|hangup`` make the simulator play one move per HTTP request. At
hundreds of moves a second those requests, and the driver that sent them, cost the
2-core benchmark machine about as much CPU as a quarter of the hub's own work
(issue 16: the simulator 0.9 ms and the driver 0.5 ms an event at 200 events/s), all
taken from the cores being measured. A script is sent a chunk at a time, ahead of
its moves, and the simulator's loop plays each move when it is due: the same frames,
the same world, a fraction of the requests.

A move names its call by a reference of the script's choosing (``call``): ``incoming``
(or ``outgoing``) makes the call and binds the reference, the later moves of that
reference act on it. References live until the world is reset, so a call started in
one chunk is answered in the next. A whole chunk is checked before any of it is
scheduled (400 and nothing scheduled); a move that fails when played (its terminal
gone, its call already hung up) is counted and kept in ``failures``, and the moves
after it play on.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from simulator.istra.calls import CALL_MOVES

if TYPE_CHECKING:
    from simulator.istra.world import IstraWorld

MOVES = ("incoming", "outgoing", *CALL_MOVES)
MAX_MOVES_PER_CHUNK = 20_000
MAX_AHEAD_SECONDS = 3600.0
FAILURES_KEPT = 20


@dataclass
class Move:
    at: float  # time.time() when due
    move: str
    call: str
    terminal_id: str = ""
    number: str = ""
    cause: str = "disconnect"


@dataclass
class CallScript:
    calls: dict[str, str] = field(default_factory=dict)  # the script's reference -> the call's id, once made
    declared: set = field(default_factory=set)  # the references of every incoming or outgoing move scheduled
    played: int = 0
    failed: int = 0
    failures: collections.deque = field(default_factory=lambda: collections.deque(maxlen=FAILURES_KEPT))
    _pending: dict = field(default_factory=dict)  # a number per scheduled move -> its loop handle
    _numbers: itertools.count = field(default_factory=itertools.count)

    @staticmethod
    def parse(body: Any) -> list[Move]:
        """The chunk's moves, in the order given; ValueError (400) naming the first bad one."""
        if not isinstance(body, dict) or not isinstance(body.get("moves"), list) or not body["moves"]:
            raise ValueError("body must be {\"moves\": [...]} with at least one move")
        if len(body["moves"]) > MAX_MOVES_PER_CHUNK:
            raise ValueError(f"at most {MAX_MOVES_PER_CHUNK} moves a request")
        now, moves = time.time(), []
        for index, raw in enumerate(body["moves"]):
            where = f"moves[{index}]"
            if not isinstance(raw, dict):
                raise ValueError(f"{where} must be an object")
            at, kind, ref = raw.get("at"), raw.get("move"), raw.get("call")
            if isinstance(at, bool) or not isinstance(at, (int, float)) or not at - now <= MAX_AHEAD_SECONDS:
                raise ValueError(f"{where}.at must be a Unix time (seconds) within an hour")
            if kind not in MOVES:
                raise ValueError(f"{where}.move must be one of {', '.join(MOVES)}")
            if not isinstance(ref, str) or not ref:
                raise ValueError(f"{where}.call must be a non-empty string naming the call")
            move = Move(float(at), kind, ref)
            if kind in ("incoming", "outgoing"):
                move.terminal_id = raw.get("terminalId")
                move.number = raw.get("from" if kind == "incoming" else "to")
                if not isinstance(move.terminal_id, str) or not isinstance(move.number, str) or not move.number:
                    key = "from" if kind == "incoming" else "to"
                    raise ValueError(f"{where} needs terminalId and {key} (strings)")
            elif kind == "hangup":
                move.cause = raw.get("cause", "disconnect")
                if not isinstance(move.cause, str):
                    raise ValueError(f"{where}.cause must be a string")
            moves.append(move)
        return moves

    def check_references(self, moves: list[Move]) -> None:
        """Each move acts on a call an earlier move makes, in this chunk or an earlier one."""
        known = set(self.declared)
        for index, move in enumerate(moves):
            if move.move in ("incoming", "outgoing"):
                known.add(move.call)
            elif move.call not in known:
                raise ValueError(f"moves[{index}].call {move.call!r} names no call an earlier move made")

    def schedule(self, world: IstraWorld, moves: list[Move]) -> int:
        loop = asyncio.get_running_loop()
        wall, mono = time.time(), loop.time()
        self.declared.update(move.call for move in moves if move.move in ("incoming", "outgoing"))
        for move in moves:
            number = next(self._numbers)
            self._pending[number] = loop.call_at(mono + max(0.0, move.at - wall), self._play, world, move, number)
        return len(moves)

    def _play(self, world: IstraWorld, move: Move, number: int) -> None:
        self._pending.pop(number, None)
        try:
            if move.move == "incoming":
                self.calls[move.call] = world.incoming_call(move.terminal_id, move.number).line_id
            elif move.move == "outgoing":
                self.calls[move.call] = world.outgoing_call(move.terminal_id, move.number).line_id
            else:
                world.move_call(self.calls[move.call], move.move, move.cause)
            self.played += 1
        except Exception as exc:  # noqa: BLE001 - a move that cannot be played is reported, the script plays on
            self.failed += 1
            self.failures.append({"move": move.move, "call": move.call, "error": f"{exc.__class__.__name__}: {exc}"})

    def status(self) -> dict[str, Any]:
        return {"pending": len(self._pending), "played": self.played, "failed": self.failed,
                "failures": list(self.failures)}

    def clear(self) -> None:
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        self.calls.clear()
        self.declared.clear()
        self.played = self.failed = 0
        self.failures.clear()
