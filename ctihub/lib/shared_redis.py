"""The one Redis client of a process, for the hub's own keys (leases aside): rate limits, metrics, debounces.

One connection pool per process, created on first use and again after a fork (a
pool inherited across fork is not safe to share). Short timeouts: every caller
treats Redis as something that may be briefly away.
"""

from __future__ import annotations

import os
import threading

import redis
from django.conf import settings

_clients: dict[int, redis.Redis] = {}
_lock = threading.Lock()


def shared_redis() -> redis.Redis:
    pid = os.getpid()
    with _lock:
        client = _clients.get(pid)
        if client is None:
            client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
            _clients.clear()
            _clients[pid] = client
        return client
