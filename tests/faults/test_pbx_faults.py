"""PBX-side faults under steady calls: every call still ends once, right, in ctihub, retailCRM and the consoles.

One hub and one seeded enterprise serve the whole module (``fault_world``); each test plays its own
calls, breaks the PBX side a few times while they run, and checks those calls end to end.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.faults.harness import Consoles, Traffic, check_invariant, listener_reconnects, wait_connected, \
    wait_reconnected

# Generous: the hub starts with the first test, and a loaded 2-core machine settles slowly.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]

ROUNDS = 3


def test_it_keeps_every_call_when_nothing_breaks(fault_world):
    with Consoles(fault_world) as consoles:
        with Traffic(fault_world, seed=1) as traffic:
            traffic.wait_for_calls(8)
        figures = check_invariant(fault_world, traffic, consoles)
        assert figures.calls_checked >= 8


def test_it_keeps_every_call_when_the_pbx_closes_the_socket_abruptly(fault_world):
    with Consoles(fault_world) as consoles:
        with Traffic(fault_world, seed=2) as traffic:
            for _ in range(ROUNDS):
                traffic.wait_for_calls(3)
                before = listener_reconnects(fault_world)
                assert fault_world.istra.drop_websockets()["dropped"] >= 1
                wait_reconnected(fault_world, before)
            traffic.wait_for_calls(3)
        check_invariant(fault_world, traffic, consoles)


@pytest.mark.parametrize("silent", [True, False], ids=["half-open", "pings-only"])
def test_it_keeps_every_call_when_the_pbx_stops_answering_pings(fault_world, silent):
    """Half-open: the path died without a FIN, so neither pongs nor frames come; only a missing pong tells.
    Pings only: frames still flow but pongs do not; either staying or reconnecting is fine, losing is not."""
    with Consoles(fault_world) as consoles:
        with Traffic(fault_world, seed=3) as traffic:
            for _ in range(ROUNDS):
                traffic.wait_for_calls(2)
                before = listener_reconnects(fault_world)
                assert fault_world.istra.mute_pings(silent=silent)["sockets"] >= 1
                if silent:
                    # A few keep-alive intervals (5 s in tests) is what a dead path may cost, not forever.
                    wait_reconnected(fault_world, before, timeout=30)
                else:
                    traffic.wait_for_calls(2)
                    fault_world.istra.mute_pings(mute=False)
            traffic.wait_for_calls(2)
        check_invariant(fault_world, traffic, consoles)


GARBAGE_FRAMES = [
    "{not json",
    "[]",
    "null",
    json.dumps({"listenerName": "CallLines"}),
    json.dumps({"listenerName": "CallLines", "item": "nope"}),
    json.dumps({"listenerName": "CallLines", "item": [{"lineId": None, "state": "talking"}]}),
    json.dumps({"listenerName": "CallLines", "item": [{"restUri": "v1/rcc/CallLine/-1", "state": "exploded"}]}),
    json.dumps({"listenerName": "SomebodyElse", "item": []}),
    "\x00\x01\x02\xff",
]


def test_it_keeps_every_call_when_the_pbx_pushes_malformed_and_oversized_frames(fault_world):
    with Consoles(fault_world) as consoles:
        with Traffic(fault_world, seed=4) as traffic:
            for _round in range(ROUNDS):
                traffic.wait_for_calls(2)
                for text in GARBAGE_FRAMES:
                    fault_world.istra.push_frame(text)
                # 4 MiB in one frame: one string, then a valid frame of junk items.
                fault_world.istra.push_frame("x", repeat=4 * 1024 * 1024)
                junk = {"restUri": "v1/rcc/CallLine/-999999", "state": "exploded", "displayedNumber": "0" * 64}
                fault_world.istra.push_frame(json.dumps(junk) + ",", repeat=30000,
                                             prefix='{"listenerName": "CallLines", "item": [', suffix="{}]}")
            traffic.wait_for_calls(3)
        check_invariant(fault_world, traffic, consoles)
        wait_connected(fault_world)


def test_it_logs_in_again_and_keeps_every_call_when_the_pbx_session_expires(fault_world):
    with Consoles(fault_world) as consoles:
        with Traffic(fault_world, seed=5) as traffic:
            for _ in range(ROUNDS):
                traffic.wait_for_calls(3)
                before = listener_reconnects(fault_world)
                assert fault_world.istra.expire_sessions()["expired"] >= 1
                wait_reconnected(fault_world, before)
            traffic.wait_for_calls(3)
        check_invariant(fault_world, traffic, consoles)


def test_it_keeps_every_call_when_the_pbx_answers_503_for_a_while(fault_world, outage_seconds=4):
    """IPTC down: every REST request answers 503; the socket the hub holds is cut, so it cannot come
    back (binding a listener is REST) until the outage ends, and must catch up on what happened."""
    with Consoles(fault_world) as consoles:
        with Traffic(fault_world, seed=6) as traffic:
            for _ in range(ROUNDS):
                traffic.wait_for_calls(3)
                before = listener_reconnects(fault_world)
                fault_world.istra.set_iptc(False)
                fault_world.istra.drop_websockets()
                time.sleep(outage_seconds)
                fault_world.istra.set_iptc(True)
                wait_reconnected(fault_world, before)
            traffic.wait_for_calls(3)
        check_invariant(fault_world, traffic, consoles)
