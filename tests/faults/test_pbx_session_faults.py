"""PBX sessions and outages under steady calls, for every Istra kind at once: every call still ends once, right.

Sessions expired (their sockets closed or left open), 503s then a close, a 10 s outage, every PBX fault one
after another, and a short idle timeout the hub's session check must keep every session alive through. The
world, the report and the test body are ``tests/faults/istra_world.py``'s (shared with ``test_pbx_faults.py``:
sockets and pings, on a hub of their own).
"""

from __future__ import annotations

import itertools
import time

import pytest

from tests.faults.harness import Consoles, Traffic, check_invariant, istra_fault_settings, listeners, wait_connected
from tests.faults.istra_world import CALLS_PER_SECOND, istra_world, report, report_path, run

# Generous: the hub starts with the first test, and a loaded 2-core machine settles slowly.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]

# The module's hub (tests/faults/conftest.py fault_hub) runs with these settings.
HUB_SETTINGS = istra_fault_settings


@pytest.fixture(scope="module")
def fault_world(fault_hub):
    return istra_world(fault_hub, report_path(__name__))


def test_it_logs_in_again_at_once_when_the_sessions_expire_with_their_sockets_closed_or_left_open(
        request, fault_world):
    """Closed: the hub sees its sockets close. Left open (pings still answered, no frame comes any more):
    only its REST session check tells it, within ISTRA_SESSION_CHECK_SECONDS (2 s here)."""
    variants = itertools.cycle(["session_expired_sockets_closed", "session_expired_sockets_open"])
    run(request, fault_world, 7, lambda faults: faults.inject(next(variants)))


def test_it_comes_back_within_seconds_after_six_503s_then_a_close(request, fault_world):
    run(request, fault_world, 8, lambda faults: faults.inject("pbx_503_then_close"))


def test_it_comes_back_by_itself_after_six_404_pages_from_a_proxy_then_a_close(request, fault_world):
    """A 4xx without Istra's error body came from something in front of it: the listeners back off and come
    back, no admin needed. (Taken as a refusal, each listener that met one stayed FAILED.)"""
    run(request, fault_world, 11, lambda faults: faults.inject("pbx_maintenance_page_then_close"))


def test_it_ends_right_every_call_that_ended_during_a_10_s_503_outage(request, fault_world):
    run(request, fault_world, 9, lambda faults: faults.inject("pbx_outage"), rounds=1)


def test_it_keeps_every_call_through_every_pbx_fault_one_after_another(request, fault_world):
    run(request, fault_world, 10, lambda faults: faults.all_in_a_row(), rounds=1)


# The PBX expires a session idle this long. The hub's session check (every 2 s here) must keep each one
# alive: 7 checks per timeout, room for a busy machine. The traffic outlasts the timeout, so that a hub
# without the check loses its myRCC and myCrm sessions (their sockets carry no keep-alive frame) during it.
IDLE_TIMEOUT = 15
IDLE_TRAFFIC_SECONDS = 20


def test_it_keeps_every_session_alive_at_a_short_idle_timeout(request, fault_world):
    """The PBX expires a session idle for 15 s, leaving its sockets open (pings are not activity): the hub's
    session check keeps every session alive, so no listener ever has to come back, and no call is lost."""
    world = fault_world
    before = {listener["id"]: listener["reconnects"] for listener in listeners(world)}
    world.istra.configure(sessionTimeout=IDLE_TIMEOUT, expiryClosesSockets=False)
    try:
        with Consoles(world) as consoles:
            with Traffic(world, calls_per_second=CALLS_PER_SECOND, seed=11) as traffic:
                time.sleep(IDLE_TRAFFIC_SECONDS)
            figures = check_invariant(world, traffic, consoles, assert_clean=False)
        reconnected = [f"{listener['name']} ({listener['reconnects'] - before[listener['id']]})"
                       for listener in listeners(world) if listener["reconnects"] != before[listener["id"]]]
        forgotten = [socket["listeners"] for socket in world.istra.websockets() if not socket["sessionLive"]]
    finally:
        world.istra.configure(sessionTimeout=1800.0, expiryClosesSockets=True)
        if any(not socket["sessionLive"] for socket in world.istra.websockets()):
            world.istra.drop_websockets()  # sessions the hub lost: the next tests start from fresh ones
            wait_connected(world, 60)
    report(request, figures, injected={f"idle_expiry_{IDLE_TIMEOUT}s": 1}, idle_timeout_s=IDLE_TIMEOUT,
           traffic_s=IDLE_TRAFFIC_SECONDS, reconnected=reconnected, forgotten=forgotten)
    # A socket whose session the PBX forgot still answers pings but carries nothing: its calls are lost to it
    # (myRCC's and a lone myCrm user's would only show as unreported, so nothing may be unreported here).
    assert not forgotten, f"sockets of sessions the PBX expired are still open: {forgotten}"
    assert not figures.calls_unreported, f"{figures.calls_unreported} calls reached no socket with nothing broken"
    assert not reconnected, f"listeners reconnected while their sessions should have been kept: {reconnected}"
