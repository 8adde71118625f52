"""Redis restarted under steady calls: broker, leases, channel layer and counters all start empty again.

The hub of this module runs on a private ``redis-server`` (the shared one is never touched): stopping
it loses every lease, queued task and console group membership at once, and ctihub must come back
from that without losing or doubling a call and with every console showing the truth.
"""

from __future__ import annotations

import pytest

from tests.faults.conftest import start_fault_hub
from tests.faults.harness import Consoles, Traffic, check_invariant, seed_world, wait_connected

pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def redis_world(fault_db, django_db_blocker, private_redis):
    hub = start_fault_hub(django_db_blocker, REDIS_URL=private_redis.url)
    try:
        yield seed_world(hub), private_redis
    finally:
        hub.stop()


def test_it_keeps_every_call_and_console_when_redis_restarts(redis_world):
    world, redis_server = redis_world
    with Consoles(world) as consoles:
        with Traffic(world, seed=21) as traffic:
            for _round in range(2):
                traffic.wait_for_calls(3)
                redis_server.restart(down_seconds=2)
                wait_connected(world, 60)
            traffic.wait_for_calls(3)
        check_invariant(world, traffic, consoles)
