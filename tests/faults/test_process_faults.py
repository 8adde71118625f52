"""Process faults under steady calls: workers killed or restarted, daphne restarted, database sessions cut.

Every call still ends once and right in ctihub and retailCRM, every console ends showing the truth,
and each fault leaves the module's hub whole (two workers, daphne up) for the next one.
"""

from __future__ import annotations

import pytest

from tests.faults.harness import Faults, run_with_faults

pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]

# A generous bound: on a busy 2-core machine the p99 reached 6.9-7.7 s (issue 16) while every console still
# came back with all its cards; most of it is a new daphne starting, which a machine half as fast and busy
# takes four times as long for. The 5 s target is measured by bench/soak.py on a quiet machine.
RECONNECT_P99_BOUND_MS = 30000


def test_it_hands_the_listener_to_the_other_worker_when_its_holder_is_killed_mid_call(fault_world):
    _, faults = run_with_faults(fault_world, 11, Faults.worker_killed, rounds=2)
    # The lease runs out (3 s here), then the next scan (every second) takes it and logs in: a TTL and a few
    # seconds, with room for a slow, busy machine; not minutes.
    ttl = float(fault_world.hub.env["LISTENER_LEASE_TTL_MS"]) / 1000
    assert len(faults.takeovers_s) == 2 and max(faults.takeovers_s) <= ttl + 20, faults.takeovers_s


def test_it_keeps_every_call_when_both_workers_restart(fault_world):
    run_with_faults(fault_world, 12, Faults.workers_restarted, rounds=2)


def test_it_reconnects_every_console_within_seconds_when_daphne_restarts(fault_world):
    figures, faults = run_with_faults(fault_world, 13, Faults.daphne_restarted, calls_between=2)
    assert figures.reconnects >= 3 * len(fault_world.seats)
    assert figures.reconnect_p99_ms <= RECONNECT_P99_BOUND_MS, figures


def test_it_keeps_every_call_when_the_database_drops_the_hubs_connections(fault_world):
    run_with_faults(fault_world, 14, Faults.database_dropped)
