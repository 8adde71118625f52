"""The live workers that hold listeners: each announces itself in Redis with a heartbeat.

One sorted set, ``WORKERS_KEY``: member the worker's id (its supervisor's owner id, the value its leases hold),
score the epoch milliseconds of its last beat. A supervisor beats on every cycle (a few times a lease TTL); a
worker whose last beat is older than ``LISTENER_HEARTBEAT_TTL_MS`` (at most the lease TTL) is dead and drops out (its entry is removed
by whoever reads next). A worker that stops cleanly leaves at once (``leave``) before handing its listeners over.

A change of the live set (a worker's first beat, a leave, a dead worker dropped) is also published on
``CHANGES_CHANNEL`` (suffixed with the Redis database: channels are not scoped by it): supervisors at their share wait on it (``watch``) instead of reading the set every tick, so
an idle worker costs no Redis round trip between scans and still offers its surplus as soon as a worker joins.

``live_workers(client)`` is the public reading (the scale-out benchmark uses it beside
``telephony.sockets.leases.lease_owners``).
"""

from __future__ import annotations

import time

import redis
from django.conf import settings

WORKERS_KEY = "ctihub:listener-workers"
CHANGES_CHANNEL = "ctihub:listener-workers:changes"


def _now_ms() -> int:
    return int(time.time() * 1000)


def heartbeat_ttl_ms() -> int:
    """``LISTENER_HEARTBEAT_TTL_MS``, but never longer than the lease TTL: a dead worker's leases must not
    expire while it still counts as live, or its share would wait, unheld, for its heartbeat to run out."""
    return min(settings.LISTENER_HEARTBEAT_TTL_MS, settings.LISTENER_LEASE_TTL_MS)


def changes_channel(client: redis.Redis) -> str:
    """``CHANGES_CHANNEL`` of ``client``'s database: a publish reaches every database's subscribers, and the
    workers of another database (another deployment, a test run beside this one) are not ours."""
    return f"{CHANGES_CHANNEL}:{client.connection_pool.connection_kwargs.get('db', 0)}"


def beat(client: redis.Redis, worker: str) -> None:
    if client.zadd(WORKERS_KEY, {worker: _now_ms()}):  # new in the set: joined (or back after it expired)
        client.publish(changes_channel(client), worker)


def leave(client: redis.Redis, worker: str) -> None:
    if client.zrem(WORKERS_KEY, worker):
        client.publish(changes_channel(client), worker)


def watch(client: redis.Redis) -> redis.client.PubSub:
    """A subscription to ``changes_channel(client)``, on a connection of its own (the caller closes it)."""
    changes = client.pubsub(ignore_subscribe_messages=True)
    changes.subscribe(changes_channel(client))
    return changes


def live_workers(client: redis.Redis, ttl_ms: int | None = None) -> list[str]:
    """The ids of the workers whose last beat is younger than ``ttl_ms`` (default: the setting), sorted."""
    ttl_ms = heartbeat_ttl_ms() if ttl_ms is None else ttl_ms
    oldest = _now_ms() - ttl_ms
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(WORKERS_KEY, "-inf", f"({oldest}")
    pipe.zrangebyscore(WORKERS_KEY, oldest, "+inf")
    dropped, members = pipe.execute()
    if dropped:  # a dead worker: those at their share hear of it now, not at their next scan
        client.publish(changes_channel(client), "dropped")
    return sorted(member.decode() if isinstance(member, bytes) else member for member in members)
