"""The pop-up benchmark's traffic, worked out ahead for the simulator's script (issue 16).

Both drivers (a script the simulator plays, a control request a move) play these moves: ``rate`` a second,
each terminal with one call at a time through ringing, talking and ended, every call finished.
"""

import collections

import pytest

from bench.popup_latency import STATES, _Calls, _plan


def test_it_paces_the_moves_at_the_rate_and_finishes_every_call_it_starts():
    calls = _Calls([(f"t{n}", None) for n in range(5)])
    moves = _plan(seconds=2.0, rate=50.0, calls=calls, start=1000.0)

    gaps = {round(b[0] - a[0], 6) for a, b in zip(moves, moves[1:], strict=False)}
    assert min(gaps) == pytest.approx(0.02)  # one move a tick; a tick with nothing to do is skipped
    assert moves[0][0] == 1000.0 and all(at < 1000.0 + 2.0 for at, _n, state, _t in moves if state == "ringing")
    by_call = collections.defaultdict(list)
    for _at, number, state, terminal in moves:
        by_call[number].append((state, terminal))
    assert all([state for state, _ in steps] == list(STATES) for steps in by_call.values())
    assert all(len({terminal for _, terminal in steps}) == 1 for steps in by_call.values())
    assert len(calls.free) == 5 and not calls.under_way  # every call ended: the next step starts from here


def test_it_rings_a_terminal_again_only_after_its_call_ended():
    calls = _Calls([("t1", None), ("t2", None)])
    busy: dict[str, str] = {}
    for _at, number, state, terminal in _plan(seconds=3.0, rate=20.0, calls=calls, start=0.0):
        if state == "ringing":
            assert terminal not in busy, f"{terminal} rang for {number} during {busy.get(terminal)}"
            busy[terminal] = number
        elif state == "ended":
            assert busy.pop(terminal) == number


def test_it_numbers_calls_on_from_the_step_before():
    calls = _Calls([("t1", None)])
    first = _plan(seconds=0.5, rate=20.0, calls=calls, start=0.0)
    second = _plan(seconds=0.5, rate=20.0, calls=calls, start=10.0)
    assert not {number for _a, number, _s, _t in first} & {number for _a, number, _s, _t in second}
