"""PBX-side faults under steady calls: every call still ends once, right, in ctihub, retailCRM and the consoles.

One hub and one seeded enterprise serve the whole module (``fault_world``); each test plays its own
calls, breaks the PBX side a few times while they run (``harness.Faults``), and checks those calls
end to end.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import Faults, run_with_faults

# Generous: the hub starts with the first test, and a loaded 2-core machine settles slowly.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]

def test_it_keeps_every_call_when_nothing_breaks(fault_world):
    figures, _ = run_with_faults(fault_world, 1, lambda faults: None, rounds=2, calls_between=4)
    assert figures.calls_checked >= 8


def test_it_keeps_every_call_when_the_pbx_closes_the_socket_abruptly(fault_world):
    run_with_faults(fault_world, 2, Faults.pbx_socket_closed)


def test_it_notices_a_half_open_socket_by_its_unanswered_pings_and_keeps_every_call(fault_world):
    """No pongs and no frames (the path died without a FIN): only the missing pongs tell, within a few
    keep-alive intervals (2 s here)."""
    run_with_faults(fault_world, 3, lambda faults: faults.pings_unanswered(silent=True))


def test_it_keeps_every_call_when_the_pbx_stops_answering_pings_but_still_sends_frames(fault_world):
    run_with_faults(fault_world, 4, lambda faults: faults.pings_unanswered(silent=False), rounds=2)


def test_it_keeps_every_call_when_the_pbx_pushes_malformed_and_oversized_frames(fault_world):
    run_with_faults(fault_world, 5, Faults.garbage_frames)


def test_it_logs_in_again_and_keeps_every_call_when_the_pbx_session_expires(fault_world):
    run_with_faults(fault_world, 6, Faults.session_expired)


def test_it_keeps_every_call_when_the_pbx_answers_503_for_a_while(fault_world):
    run_with_faults(fault_world, 7, Faults.pbx_503)
