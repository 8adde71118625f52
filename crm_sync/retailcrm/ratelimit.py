"""retailCRM's request limits, shared by every process that talks to it: a token bucket in Redis.

retailCRM allows 10 requests per second per API key, and 40 per second for the
``/telephony/*`` methods, and answers 503 (or 429) past that. Web processes
(the admin's register action) and every Celery worker send with the same key,
so the bucket lives in Redis and one Lua script takes a token atomically, with
Redis's own clock (workers' clocks may disagree).

A bucket of capacity ``c`` refilled at ``r`` tokens/s lets through at most
``c + r`` requests in any one-second window, and requests arrive at retailCRM a
few tens of milliseconds after they leave, which can bunch them. So the bucket
runs below the published limit: ``r = 0.75 L`` and ``c = 0.2 L``, so a window
holds at most ``0.95 L`` plus what arrival jitter can add, and never more than
``L``. Throughput is 7.5 requests/s (30 for telephony) sustained.
"""

from __future__ import annotations

import hashlib
import time

import redis

from ctihub.shared_redis import shared_redis

GENERAL = "general"
TELEPHONY = "telephony"
# What retailCRM publishes (requests per second per API key).
PUBLISHED_LIMITS = {GENERAL: 10, TELEPHONY: 40}
RATE_SHARE = 0.75
BURST_SHARE = 0.2

# KEYS[1] the bucket; ARGV: rate (tokens/s), capacity, key ttl (ms).
# Returns 0 when a token was taken, else how many milliseconds until one will be there.
TAKE_TOKEN = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(capacity, tokens + elapsed * rate / 1000000)
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait_ms = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return wait_ms
"""


class RateLimitTimeout(Exception):
    """No token came within the caller's patience: too much is queued for this key."""


def bucket_class(path: str) -> str:
    """Which limit a request path counts against (``/api/v5/telephony/...`` or anything else)."""
    return TELEPHONY if "/telephony/" in path else GENERAL


def rate_and_capacity(kind: str) -> tuple[float, float]:
    limit = PUBLISHED_LIMITS[kind]
    return limit * RATE_SHARE, max(1.0, limit * BURST_SHARE)


_redis = shared_redis  # the name its callers import


class RateLimiter:
    """Blocks until the API key's bucket for this kind of request has a token."""

    def __init__(self, client: redis.Redis | None = None, prefix: str = "ctihub:retailcrm:rate"):
        self._client = client
        self.prefix = prefix
        self._script = None

    @property
    def client(self) -> redis.Redis:
        return self._client or _redis()

    def key(self, api_key: str, kind: str) -> str:
        # The key itself must not sit in Redis in clear: a digest names the bucket.
        digest = hashlib.sha256(api_key.encode()).hexdigest()[:24]
        return f"{self.prefix}:{digest}:{kind}"

    def try_acquire(self, api_key: str, kind: str) -> int:
        """Take a token if there is one: 0, else the milliseconds to wait before trying again."""
        rate, capacity = rate_and_capacity(kind)
        if self._script is None or self._script.registered_client is not self.client:
            self._script = self.client.register_script(TAKE_TOKEN)
        return int(self._script(keys=[self.key(api_key, kind)], args=[rate, capacity, 60000]))

    def acquire(self, api_key: str, kind: str, max_wait: float) -> float:
        """Wait for a token (at most ``max_wait`` seconds); returns the seconds waited."""
        started = time.monotonic()
        while True:
            wait_ms = self.try_acquire(api_key, kind)
            if wait_ms == 0:
                return time.monotonic() - started
            waited = time.monotonic() - started
            if waited + wait_ms / 1000 > max_wait:
                raise RateLimitTimeout(
                    f"retailCRM's {kind} request limit is saturated: no slot within {max_wait:.0f} s"
                )
            time.sleep(wait_ms / 1000)
