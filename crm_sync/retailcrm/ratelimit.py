"""retailCRM's request limits, shared by every process that talks to it: a token bucket in Redis.

retailCRM allows 10 requests per second per API key, and 40 per second for the
``/telephony/*`` methods, and answers 503 (or 429) past that. Web processes
(the admin's register action) and every Celery worker send with the same key,
so the bucket lives in Redis and one Lua script takes a token atomically, with
Redis's own clock (workers' clocks may disagree).

A bucket of capacity ``c`` refilled at ``r`` tokens/s lets through at most
``c + r`` requests in any one-second window, and requests arrive at retailCRM a
few tens of milliseconds after they leave, which can bunch them. So the bucket
runs below the published limit: ``r = 0.85 L`` and ``c = 0.05 L`` (at least 1),
so a telephony window holds at most ``0.9 L`` (36) plus what arrival jitter can
add (at 34 a second, the 4 left are 118 ms of it), and never more than ``L``.
Throughput is 8.5 requests/s (34 for telephony) sustained: 15 new calls a second
make 30 call events, and 0.75 L (30/s, the first version) left nothing for their
uploads, so events queued without end behind one another.

Priorities. A call event pops retailCRM's card for the manager now; an upload
only fills the call history. Requests say which they are (``HIGH`` or ``LOW``):
a high one that finds no token registers itself as waiting (a sorted set next to
the bucket, entries expiring on their own if their worker dies), and a low one
takes a token only when nobody high is waiting and ``LOW_RESERVE`` tokens would
stay, so the next event finds one. Under overload uploads wait (the outbox keeps
them), events do not wait for uploads.
"""

from __future__ import annotations

import hashlib
import time
import uuid

import redis

from ctihub.lib.shared_redis import shared_redis
from ctihub.lib.token_bucket import BUCKET_REFILL, BUCKET_SAVE

GENERAL = "general"
TELEPHONY = "telephony"
# What retailCRM publishes (requests per second per API key).
PUBLISHED_LIMITS = {GENERAL: 10, TELEPHONY: 40}
RATE_SHARE = 0.85
BURST_SHARE = 0.05
HIGH = "high"  # call events, the responsible-manager lookup of a ringing call
LOW = "low"  # uploads to the call history, anything that can wait
LOW_RESERVE = 1  # tokens a low-priority request leaves in the bucket

# The token bucket (``ctihub.lib.token_bucket``, the inbound limit's too), with priorities. KEYS[2] the
# high-priority waiters (a sorted set: waiter id -> when its registration lapses, in microseconds of
# Redis's clock), KEYS[3] a timeline that only a benchmark creates (each grant, and each high request's
# refusals, appended while it exists).
# ARGV[4] priority (1 high, 0 low), ARGV[5] waiter id, ARGV[6] low reserve.
# Returns 0 when a token was taken, else the milliseconds to wait before trying again.
TAKE_TOKEN_BY_PRIORITY = BUCKET_REFILL + """
if ARGV[4] == '1' then
  if tokens >= 1 then
    tokens = tokens - 1
    redis.call('ZREM', KEYS[2], ARGV[5])
  else
    wait_ms = math.ceil((1 - tokens) * 1000 / rate)
    -- Registered until a little after it will look again: a waiter whose worker died lapses alone.
    redis.call('ZADD', KEYS[2], now + (wait_ms + 1000) * 1000, ARGV[5])
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
else
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local need = 1 + tonumber(ARGV[6])
  if redis.call('ZCARD', KEYS[2]) > 0 then
    wait_ms = math.max(1, math.ceil(1000 / rate))
  elseif tokens >= need then
    tokens = tokens - 1
  else
    wait_ms = math.ceil((need - tokens) * 1000 / rate)
  end
end
""" + BUCKET_SAVE + """
if redis.call('EXISTS', KEYS[3]) == 1 and (wait_ms == 0 or ARGV[4] == '1') then
  local what = 'waiting'
  if wait_ms == 0 then what = 'granted' end
  local stamp = string.format('%d.%06d', tonumber(now_parts[1]), tonumber(now_parts[2]))
  redis.call('RPUSH', KEYS[3], ARGV[4] .. ' ' .. what .. ' ' .. ARGV[5] .. ' ' .. stamp)
end
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

    def try_acquire(self, api_key: str, kind: str, priority: str = HIGH, waiter: str = "") -> int:
        """Take a token if there is one: 0, else the milliseconds to wait before trying again.

        A ``HIGH`` request that must wait is registered as ``waiter`` (give the same id on every try of
        one request) until it takes its token; ``LOW`` requests do not take one while any is registered.
        """
        rate, capacity = rate_and_capacity(kind)
        if self._script is None or self._script.registered_client is not self.client:
            self._script = self.client.register_script(TAKE_TOKEN_BY_PRIORITY)
        key = self.key(api_key, kind)
        args = [rate, capacity, 60000, 1 if priority == HIGH else 0, waiter or uuid.uuid4().hex, LOW_RESERVE]
        return int(self._script(keys=[key, f"{key}:waiting", f"{key}:timeline"], args=args))

    def acquire(self, api_key: str, kind: str, max_wait: float, priority: str = HIGH) -> float:
        """Wait for a token (at most ``max_wait`` seconds); returns the seconds waited.

        The sleeps are only this request's turn at the shared budget (the script says how long until a
        token is there); what waited and how long is counted (``ctihub.lib.metrics.crm_token_wait``).
        """
        started = time.monotonic()
        waiter = uuid.uuid4().hex
        tries = 0
        try:
            while True:
                wait_ms = self.try_acquire(api_key, kind, priority, waiter)
                tries += 1
                if wait_ms == 0:
                    waited = time.monotonic() - started
                    _record_wait(priority, waited if tries > 1 else 0.0)  # a first try's round trip is no wait
                    return waited
                waited = time.monotonic() - started
                if waited + wait_ms / 1000 > max_wait:
                    raise RateLimitTimeout(
                        f"retailCRM's {kind} request limit is saturated: no slot within {max_wait:.0f} s"
                    )
                time.sleep(wait_ms / 1000)
        except BaseException:
            if priority == HIGH:
                self._forget_waiter(api_key, kind, waiter)
            raise

    def _forget_waiter(self, api_key: str, kind: str, waiter: str) -> None:
        try:
            self.client.zrem(f"{self.key(api_key, kind)}:waiting", waiter)
        except redis.RedisError:
            pass  # the registration lapses on its own within a second or so


def _record_wait(priority: str, seconds: float) -> None:
    from ctihub.lib import metrics

    metrics.crm_token_wait(priority, seconds)
