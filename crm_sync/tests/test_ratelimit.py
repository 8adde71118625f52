"""The shared token bucket (Redis + Lua) that keeps every process under retailCRM's limits."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from crm_sync.retailcrm.ratelimit import (
    GENERAL,
    HIGH,
    LOW,
    LOW_RESERVE,
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
    # ...and it does let traffic through at close to its rate (1 of burst + 8.5/s).
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


def test_it_lets_no_upload_take_a_token_while_a_call_event_waits_for_one():
    limiter = fresh_limiter()
    while limiter.try_acquire("key-a", TELEPHONY, HIGH, "drain") == 0:
        pass  # the budget is spent ("drain" is now registered as waiting: forget it)
    limiter.client.delete(f"{limiter.key('key-a', TELEPHONY)}:waiting")
    assert limiter.try_acquire("key-a", TELEPHONY, HIGH, "event-1") > 0  # an event waits, registered
    rate, _ = rate_and_capacity(TELEPHONY)
    time.sleep(3 / rate)  # tokens enough for an upload and its reserve
    assert limiter.try_acquire("key-a", TELEPHONY, LOW) > 0  # the upload must wait: an event is waiting
    assert limiter.try_acquire("key-a", TELEPHONY, HIGH, "event-1") == 0  # the event takes its token
    time.sleep(3 / rate)
    assert limiter.try_acquire("key-a", TELEPHONY, LOW) == 0  # nobody waits now: the upload goes


def test_it_leaves_a_token_for_the_next_call_event_when_an_upload_takes_one():
    limiter = fresh_limiter()
    _, capacity = rate_and_capacity(TELEPHONY)
    taken = 0
    while limiter.try_acquire("key-a", TELEPHONY, LOW) == 0:
        taken += 1
    assert taken == int(capacity) - LOW_RESERVE
    assert limiter.try_acquire("key-a", TELEPHONY, HIGH) == 0  # the reserve is the event's


def test_it_forgets_a_waiting_call_event_whose_worker_died():
    limiter = fresh_limiter()
    while limiter.try_acquire("key-a", TELEPHONY, HIGH, "gone") == 0:
        pass  # "gone" is registered as waiting, and never comes back
    rate, _ = rate_and_capacity(TELEPHONY)
    deadline = time.monotonic() + 10
    while limiter.try_acquire("key-a", TELEPHONY, LOW) != 0:
        assert time.monotonic() < deadline, "uploads stayed blocked by a dead waiter"
        time.sleep(0.05)


def test_it_unregisters_a_call_event_that_gave_up_waiting():
    limiter = fresh_limiter()
    while limiter.try_acquire("key-a", TELEPHONY, HIGH, "x") == 0:
        pass
    limiter.client.delete(f"{limiter.key('key-a', TELEPHONY)}:waiting")
    with pytest.raises(RateLimitTimeout):
        limiter.acquire("key-a", TELEPHONY, max_wait=0.001)
    assert limiter.client.zcard(f"{limiter.key('key-a', TELEPHONY)}:waiting") == 0


def test_it_sustains_thirty_call_events_a_second_and_their_uploads_within_the_limit():
    # 15 new calls a second: 30 events a second, and the uploads gathered once a second.
    rate, capacity = rate_and_capacity(TELEPHONY)
    # ...with 4 requests of margin (118 ms at that rate) for requests bunching on their way to retailCRM.
    assert rate >= 30 + 2 and capacity + rate <= PUBLISHED_LIMITS[TELEPHONY] - 4 + 1e-9
