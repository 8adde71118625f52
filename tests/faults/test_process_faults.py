"""Process faults under steady calls: workers killed or restarted, daphne restarted, database sessions cut.

Every call still ends once and right in ctihub and retailCRM, every console ends showing the truth,
and each test leaves the module's hub whole (two workers, daphne up) for the next one.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import Consoles, Traffic, check_invariant, listener_owner, wait_connected
from tests.support.processes import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]

RECONNECT_P99_TARGET_MS = 5000


def holder_index(hub, owner: str) -> int:
    pid = int(owner.split(":")[1])
    return next(n for n, worker in enumerate(hub.workers) if worker.process.pid == pid)


def test_it_hands_the_listener_to_the_other_worker_when_its_holder_is_killed_mid_call(fault_world):
    hub = fault_world.hub
    ttl = float(hub.env["LISTENER_LEASE_TTL_MS"]) / 1000
    takeovers = []
    with Consoles(fault_world) as consoles:
        with Traffic(fault_world, seed=11) as traffic:
            for _round in range(2):
                traffic.wait_for_calls(3)
                owner = listener_owner(fault_world)
                killed_at = time.monotonic()
                hub.kill_worker(holder_index(hub, owner))
                wait_for(lambda: listener_owner(fault_world) not in ("", owner), 30, interval=0.1,
                         what="another worker to take the listener over")
                wait_connected(fault_world)
                takeovers.append(time.monotonic() - killed_at)
                hub.start_worker()  # back to two, so the next round (and test) has a survivor
            traffic.wait_for_calls(3)
        check_invariant(fault_world, traffic, consoles)
    # The lease runs out, then the next scan takes it: a TTL plus a little, not minutes.
    assert max(takeovers) <= ttl + 10, takeovers


def test_it_keeps_every_call_when_both_workers_restart(fault_world):
    hub = fault_world.hub
    with Consoles(fault_world) as consoles:
        with Traffic(fault_world, seed=12) as traffic:
            for _round in range(2):
                traffic.wait_for_calls(3)
                hub.restart_workers()
                wait_connected(fault_world, 60)
            traffic.wait_for_calls(3)
        check_invariant(fault_world, traffic, consoles)


def test_it_reconnects_every_console_within_seconds_when_daphne_restarts(fault_world):
    hub = fault_world.hub
    rounds = 3
    with Consoles(fault_world) as consoles:
        with Traffic(fault_world, seed=13) as traffic:
            for _round in range(rounds):
                traffic.wait_for_calls(2)
                reconnected = len(consoles.reconnects_ms)
                hub.restart_web()
                wait_for(lambda: len(consoles.reconnects_ms) >= reconnected + len(consoles.views), 30,
                         interval=0.1, what="every console to reconnect")
            traffic.wait_for_calls(2)
        figures = check_invariant(fault_world, traffic, consoles)
    assert figures.reconnects >= rounds * len(consoles.views)
    assert figures.reconnect_p99_ms <= RECONNECT_P99_TARGET_MS, consoles.reconnects_ms


def test_it_keeps_every_call_when_the_database_drops_the_hubs_connections(fault_world):
    from django.db import connection

    def cut_everyone_else() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0]

    cut = 0
    with Consoles(fault_world) as consoles:
        with Traffic(fault_world, seed=14) as traffic:
            for _round in range(3):
                traffic.wait_for_calls(3)
                cut += cut_everyone_else()
            traffic.wait_for_calls(3)
        check_invariant(fault_world, traffic, consoles)
    assert cut >= 3
