"""The shared token bucket (Redis + Lua) that keeps every process under retailCRM's limits."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from crm_sync.retailcrm.ratelimit import (
    GENERAL,
    PUBLISHED_LIMITS,
    TELEPHONY,
    RateLimiter,
    RateLimitTimeout,
    bucket_class,
    rate_and_capacity,
)


def fresh_limiter() -> RateLimiter:
    return RateLimiter(prefix=f"test:{uuid.uuid4().hex}")


def most_in_any_second(times: list[float]) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(times):
        while times[start] <= moment - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_it_never_lets_more_than_the_published_limit_through_in_any_second_across_threads():
    limiter = fresh_limiter()
    granted: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 2.5

    def hammer():
        while time.monotonic() < stop_at:
            limiter.acquire("key-a", GENERAL, max_wait=5)
            with lock:
                granted.append(time.monotonic())

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most_in_any_second(granted) <= PUBLISHED_LIMITS[GENERAL]
    # ...and it does let traffic through at close to its rate (2 of burst + 7.5/s).
    assert len(granted) >= 16


def test_it_keeps_a_bucket_per_api_key_and_per_kind_of_method():
    limiter = fresh_limiter()
    _, capacity = rate_and_capacity(GENERAL)
    for _ in range(int(capacity)):
        assert limiter.try_acquire("key-a", GENERAL) == 0
    assert limiter.try_acquire("key-a", GENERAL) > 0  # empty now: wait
    assert limiter.try_acquire("key-b", GENERAL) == 0  # another key has its own bucket
    assert limiter.try_acquire("key-a", TELEPHONY) == 0  # telephony methods have their own limit


def test_it_gives_up_when_no_token_comes_within_the_patience_given():
    limiter = fresh_limiter()
    while limiter.try_acquire("key-a", GENERAL) == 0:
        pass
    with pytest.raises(RateLimitTimeout, match="general request limit"):
        limiter.acquire("key-a", GENERAL, max_wait=0.01)


def test_it_does_not_keep_the_api_key_in_redis():
    limiter = fresh_limiter()
    limiter.try_acquire("very-secret-key", TELEPHONY)
    keys = [k.decode() for k in limiter.client.keys(f"{limiter.prefix}:*")]
    assert len(keys) == 1 and "very-secret-key" not in keys[0]


@pytest.mark.parametrize("path, kind", [
    ("/api/v5/telephony/call/event", TELEPHONY), ("/api/v5/telephony/calls/upload", TELEPHONY),
    ("/api/v5/telephony/manager", TELEPHONY), ("/api/v5/integration-modules/ctihub/edit", GENERAL),
])
def test_it_counts_telephony_methods_against_their_own_limit(path, kind):
    assert bucket_class(path) == kind
