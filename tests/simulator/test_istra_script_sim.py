"""The Istra simulator's traffic script: call moves the platform plays by itself at their times.

The pop-up benchmark drives hundreds of moves a second this way instead of a control request a
move (issue 16). What a client sees must be what the one-request-a-move API gives: the same
frames, in order, no sooner than each move is due; a bad chunk is refused whole; a move that cannot
be played is reported and the rest play on.
"""

from __future__ import annotations

import time

from tests.simulator.test_istra_faults_sim import (
    TERMINAL,
    control,
    listen_mycrm,
    logged_in,
    platform,  # noqa: F401 - the fixture
    wait_until,
)
from tests.support.sim_control import IstraControl


def script(sim, moves: list[dict], expect: int = 202):
    if expect == 202:
        return IstraControl(sim.url).script(moves)
    return control(sim, "POST", "calls/script", expect=expect, json={"moves": moves}).json()


def played(sim) -> dict:
    return IstraControl(sim.url).script_status()


def test_it_plays_a_calls_moves_at_their_times_as_the_control_requests_would(platform):  # noqa: F811
    socket = listen_mycrm(logged_in(platform, "myCrm"))
    start, start_monotonic = time.time() + 0.4, time.monotonic() + 0.4
    answer = script(platform, [
        {"at": start, "move": "incoming", "call": "a", "terminalId": TERMINAL, "from": "0612345678"},
        {"at": start + 0.2, "move": "answer", "call": "a"},
        {"at": start + 0.4, "move": "hangup", "call": "a", "cause": "disconnect"},
    ])
    assert answer == {"scheduled": 3}
    assert IstraControl(platform.url).calls() == []  # nothing is played before it is due

    frames = socket.frames_during(1.3)
    assert [frame["item"][0]["event"] for _at, frame in frames] == ["callRinging", "callTalking", "callDropped"]
    late = [round(at - (start_monotonic + offset), 3) for (at, _frame), offset in zip(frames, (0, 0.2, 0.4), strict=True)]
    assert all(lateness >= 0 for lateness in late), f"a frame went out before its move was due: {late}"
    [line] = IstraControl(platform.url).calls()
    assert (line["remote"]["number"], line["incoming"], line["dropCause"], line["history"]) == (
        "0612345678", True, "disconnect", ["ringing", "talking", "dropped"]), line
    assert played(platform) == {"pending": 0, "played": 3, "failed": 0, "failures": []}


def test_it_answers_in_a_later_chunk_a_call_an_earlier_chunk_makes(platform):  # noqa: F811
    start = time.time() + 0.3
    script(platform, [{"at": start, "move": "incoming", "call": "b", "terminalId": TERMINAL, "from": "0611111111"}])
    script(platform, [{"at": start + 0.1, "move": "answer", "call": "b"}])  # b is not made yet, only scheduled
    wait_until(lambda: played(platform)["played"] == 2)
    [line] = IstraControl(platform.url).calls()
    assert "talking" in line["history"]


def test_it_refuses_a_chunk_with_one_bad_move_and_schedules_none_of_it(platform):  # noqa: F811
    start = time.time() + 0.2
    good = {"at": start, "move": "incoming", "call": "c", "terminalId": TERMINAL, "from": "0622222222"}
    for bad, reason in (
        ({"at": start, "move": "transfer", "call": "c"}, "moves[1].move must be one of"),
        ({"at": "soon", "move": "answer", "call": "c"}, "moves[1].at must be a Unix time"),
        ({"at": start + 7200, "move": "answer", "call": "c"}, "moves[1].at must be a Unix time"),
        ({"at": start, "move": "answer", "call": "nobody"}, "moves[1].call 'nobody' names no call"),
        ({"at": start, "move": "incoming", "call": "d", "terminalId": TERMINAL}, "moves[1] needs terminalId and from"),
    ):
        answer = script(platform, [good, bad], expect=400)
        assert answer["error"].startswith(reason), answer
    assert script(platform, [], expect=400)["error"].startswith("body must be")
    time.sleep(0.4)
    assert IstraControl(platform.url).calls() == []
    assert played(platform)["pending"] == 0


def test_it_reports_a_move_it_cannot_play_and_plays_the_others(platform):  # noqa: F811
    start = time.time() + 0.2
    script(platform, [
        {"at": start, "move": "incoming", "call": "gone", "terminalId": "no-such-terminal", "from": "0633333333"},
        {"at": start, "move": "incoming", "call": "e", "terminalId": TERMINAL, "from": "0644444444"},
        {"at": start + 0.1, "move": "answer", "call": "gone"},
        {"at": start + 0.1, "move": "hangup", "call": "e"},
    ])
    wait_until(lambda: played(platform)["pending"] == 0)
    status = played(platform)
    assert (status["played"], status["failed"]) == (2, 2), status
    assert status["failures"][0]["error"].startswith("KeyError") and "no-such-terminal" in status["failures"][0]["error"]
    assert status["failures"][1] == {"move": "answer", "call": "gone", "error": "KeyError: 'gone'"}


def test_it_drops_the_moves_still_due_when_the_platform_is_reset(platform):  # noqa: F811
    script(platform, [{"at": time.time() + 0.3, "move": "incoming", "call": "f", "terminalId": TERMINAL,
                       "from": "0655555555"}])
    control(platform, "POST", "reset")
    time.sleep(0.5)
    assert IstraControl(platform.url).calls() == []
    assert played(platform) == {"pending": 0, "played": 0, "failed": 0, "failures": []}
