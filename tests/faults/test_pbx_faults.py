"""PBX-side faults under steady calls: every call still ends once, right, in ctihub, retailCRM and the consoles.

One hub and one seeded enterprise serve the whole module (``fault_world``); each test plays its own
calls, breaks the PBX side a few times while they run, and checks those calls end to end.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.faults.harness import Consoles, Traffic, check_invariant, wait_connected

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

ROUNDS = 3


def reconnects_of(world) -> int:
    from telephony.models import Listener

    return sum(Listener.objects.filter(account_id=world.account_id).values_list("reconnects", flat=True))


def test_it_keeps_every_call_when_nothing_breaks(fault_world):
    with Consoles(fault_world) as consoles, Traffic(fault_world, seed=1) as traffic:
        traffic.wait_for_calls(8)
    figures = check_invariant(fault_world, traffic, consoles)
    assert figures.calls_checked >= 8


def test_it_keeps_every_call_when_the_pbx_closes_the_socket_abruptly(fault_world):
    with Consoles(fault_world) as consoles, Traffic(fault_world, seed=2) as traffic:
        for _ in range(ROUNDS):
            traffic.wait_for_calls(3)
            before = reconnects_of(fault_world)
            assert fault_world.istra.drop_websockets()["dropped"] >= 1
            from tests.support.processes import wait_for

            wait_for(lambda: reconnects_of(fault_world) > before, 30, what="the listener to notice")
            wait_connected(fault_world)
        traffic.wait_for_calls(3)
    check_invariant(fault_world, traffic, consoles)
