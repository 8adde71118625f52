"""Redis restarted under steady calls: broker, leases, channel layer and counters all start empty again.

The hub of this module runs on a private ``redis-server`` (the shared one is never touched): stopping
it loses every lease, queued task and console group membership at once, and ctihub must come back
from that without losing or doubling a call and with every console showing the truth.
"""

from __future__ import annotations

import pytest

from tests.faults.conftest import assert_logs_keep_secrets, start_fault_hub
from tests.faults.harness import Consoles, Faults, Traffic, check_invariant, listener_reconnects, seed_world

pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def redis_world(fault_db, django_db_blocker, private_redis):
    hub = start_fault_hub(django_db_blocker, REDIS_URL=private_redis.url)
    try:
        yield seed_world(hub)
    finally:
        hub.stop()
    assert_logs_keep_secrets(hub)


def test_it_keeps_every_call_and_console_when_redis_restarts(redis_world, private_redis):
    reconnects_before = listener_reconnects(redis_world)
    with Consoles(redis_world) as consoles:
        faults = Faults(redis_world, consoles, redis=private_redis)
        with Traffic(redis_world, seed=21) as traffic:
            for _round in range(2):
                traffic.wait_for_calls(3)
                faults.redis_restarted(down_seconds=5)
            traffic.wait_for_calls(3)
        # Tasks queued in Redis die with it: the sweep takes up their calls while their start event is fresh.
        figures = check_invariant(redis_world, traffic, consoles, settle=60, assert_clean=False)
    losses = {name: getattr(figures, name) for name in figures.LOSS_FIGURES}
    assert not any(losses.values()) and figures.calls_checked, f"{losses}: {'; '.join(figures.problems[:10])}"
    # The owner takes its vanished lease back: a socket dropped for the new lease would leave a gap.
    assert listener_reconnects(redis_world) == reconnects_before, "the PBX socket was kept through the restarts"
