"""PBX-side faults under steady calls, for every Istra kind at once: every call still ends once, right.

One simulator and one hub hold every Istra kind (``seed_world(kinds=ISTRA_KINDS)``): a myRCC enterprise,
a myCrm user who also has an End User account (its call history), a myCrm user with nothing else, and an
End User-only user. Each test plays its own calls on all of them, breaks the PBX side a few times while
they run (``harness.Faults``: each fault hits every socket, so every kind), and checks those calls end to
end per kind (``Figures.by_kind``): none lost or stuck, answered state and talking time right, retailCRM's
events and one upload exactly once, and each listener connected again within 5 s of the PBX being
reachable again. Each test's figures go to ``test-artifacts/faults-istra.jsonl``; ``python -m
tests.faults.table test-artifacts/faults-istra.jsonl`` prints the table.

The hub runs with short timings (``istra_fault_settings``): a REST session check every 2 s, calls stale
after 20 s without news, call-history entries settled after 2 s; and the production backoff cap.
"""

from __future__ import annotations

import itertools
import time

import pytest

from tests.faults.harness import (
    ISTRA_KINDS, Consoles, Faults, Traffic, check_invariant, istra_fault_settings, listeners, run_with_faults,
    seed_world, wait_connected,
)
from tests.faults.table import write_line
from tests.support.processes import ARTIFACTS

# Generous: the hub starts with the first test, and a loaded 2-core machine settles slowly.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]

REPORT = ARTIFACTS / "faults-istra.jsonl"
RECONNECT_TARGET_MS = 5000  # from the PBX reachable again to every listener connected again
# The module's hub (tests/faults/conftest.py fault_hub) runs with these settings.
HUB_SETTINGS = istra_fault_settings
CALLS_PER_SECOND = 3.0  # over ten extensions of four kinds, each kind gets a quarter of them


@pytest.fixture(scope="module")
def fault_world(fault_hub):
    REPORT.unlink(missing_ok=True)
    return seed_world(fault_hub, kinds=ISTRA_KINDS)


def report(request, figures, faults: Faults | None = None, injected: dict | None = None, **extra) -> None:
    """The test's figures, per kind, to the report file and the output; then the invariant's verdict."""
    reconnects_ms = faults.reconnects_ms if faults is not None else {}
    figures.add_reconnects(reconnects_ms)
    write_line(REPORT, request.node.name, faults.injected if faults is not None else injected or {},
               {kind: kind_figures.as_dict() for kind, kind_figures in figures.by_kind.items()}, reconnects_ms, extra)
    for kind, kind_figures in figures.by_kind.items():
        print(f"{kind}: {kind_figures.as_dict()}")
    figures.assert_clean()
    unchecked = [kind for kind, kind_figures in figures.by_kind.items() if not kind_figures.calls_checked]
    assert not unchecked, f"no call checked for {unchecked}"


def assert_quick_reconnects(figures, faults: Faults) -> None:
    """Every kind's listeners came back, within RECONNECT_TARGET_MS of the PBX being reachable again."""
    for kind in ISTRA_KINDS:
        samples = faults.reconnects_ms.get(kind, [])
        assert samples, f"{kind}: no reconnect measured"
        assert max(samples) <= RECONNECT_TARGET_MS, f"{kind}: reconnects took {sorted(samples)[-5:]} ms"


def run(request, world, seed: int, inject, rounds: int = 2, calls_between: int = 6, timed: bool = True):
    figures, faults = run_with_faults(world, seed, inject, rounds=rounds, calls_between=calls_between,
                                      calls_per_second=CALLS_PER_SECOND, assert_clean=False)
    report(request, figures, faults)
    if timed:
        assert_quick_reconnects(figures, faults)
    return figures, faults


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


def test_it_logs_in_again_at_once_when_the_sessions_expire_with_their_sockets_closed_or_left_open(
        request, fault_world):
    """Closed: the hub sees its sockets close. Left open (pings still answered, no frame comes any more):
    only its REST session check tells it, within ISTRA_SESSION_CHECK_SECONDS (2 s here)."""
    variants = itertools.cycle(["session_expired_sockets_closed", "session_expired_sockets_open"])
    run(request, fault_world, 7, lambda faults: faults.inject(next(variants)))


def test_it_comes_back_within_seconds_after_six_503s_then_a_close(request, fault_world):
    run(request, fault_world, 8, lambda faults: faults.inject("pbx_503_then_close"))


def test_it_ends_right_every_call_that_ended_during_a_10_s_503_outage(request, fault_world):
    run(request, fault_world, 9, lambda faults: faults.inject("pbx_outage"), rounds=1)


def test_it_keeps_every_call_through_every_pbx_fault_one_after_another(request, fault_world):
    run(request, fault_world, 10, lambda faults: faults.all_in_a_row(), rounds=1)


IDLE_TIMEOUT = 30
IDLE_TRAFFIC_SECONDS = 45


def test_it_keeps_every_session_alive_at_a_30_s_idle_timeout(request, fault_world):
    """The PBX expires a session idle for 30 s, leaving its sockets open (pings are not activity): the hub's
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
    report(request, figures, injected={f"idle_expiry_{IDLE_TIMEOUT}s": 1}, idle_timeout_s=IDLE_TIMEOUT, traffic_s=IDLE_TRAFFIC_SECONDS, reconnected=reconnected,
           forgotten=forgotten)
    # A socket whose session the PBX forgot still answers pings but carries nothing: its calls are lost to it
    # (myRCC's and a lone myCrm user's would only show as unreported, so nothing may be unreported here).
    assert not forgotten, f"sockets of sessions the PBX expired are still open: {forgotten}"
    assert not figures.calls_unreported, f"{figures.calls_unreported} calls reached no socket with nothing broken"
    assert not reconnected, f"listeners reconnected while their sessions should have been kept: {reconnected}"
