"""PBX sockets failing under steady calls, for every Istra kind at once: every call still ends once, right.

Sockets cut or closed, pings unanswered (a half-open path, or pongs missing while frames still come), and
garbage frames. The world, the report and the test body are ``tests/faults/istra_world.py``'s (shared with
``test_pbx_session_faults.py``: sessions, 503s and outages, on a hub of their own).
"""

from __future__ import annotations

import pytest

from tests.faults.harness import istra_fault_settings
from tests.faults.istra_world import istra_world, report_path, run

# Generous: the hub starts with the first test, and a loaded 2-core machine settles slowly.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]

# The module's hub (tests/faults/conftest.py fault_hub) runs with these settings.
HUB_SETTINGS = istra_fault_settings


@pytest.fixture(scope="module")
def fault_world(fault_hub):
    return istra_world(fault_hub, report_path(__name__))


def test_it_keeps_every_call_of_every_kind_when_the_pbx_closes_the_sockets_abruptly(request, fault_world):
    run(request, fault_world, 2, lambda faults: faults.inject("pbx_socket_closed"), rounds=3)


def test_it_keeps_every_call_of_every_kind_when_the_pbx_closes_the_sockets_cleanly(request, fault_world):
    run(request, fault_world, 3, lambda faults: faults.inject("pbx_socket_closed_cleanly"))


def test_it_notices_half_open_sockets_of_every_kind_by_their_unanswered_pings(request, fault_world):
    """No pongs and no frames (the path died without a FIN): only the missing pongs tell, within a few
    keep-alive intervals (2 s here)."""
    run(request, fault_world, 4, lambda faults: faults.inject("pings_unanswered", "half_open", silent=True),
        timed=False)


def test_it_keeps_every_call_when_the_pbx_stops_answering_pings_but_still_sends_frames(request, fault_world):
    run(request, fault_world, 5,
        lambda faults: faults.inject("pings_unanswered", "pings_unanswered_with_frames", silent=False),
        rounds=1, timed=False)


def test_it_keeps_every_call_when_every_kind_gets_malformed_and_oversized_frames(request, fault_world):
    run(request, fault_world, 6, lambda faults: faults.inject("garbage_frames"), timed=False)
