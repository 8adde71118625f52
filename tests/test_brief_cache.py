"""The few-seconds cache of hot look-ups: one reload at a time, never a value an edit made stale."""

from __future__ import annotations

import threading
import time

from ctihub.lib.brief_cache import BriefCache, forget_all


def expired(cache: BriefCache, key, by: float) -> None:
    stored_at, value = cache._entries[key]
    cache._entries[key] = (stored_at - by, value)


def test_it_lets_one_thread_reload_an_expired_entry_while_the_others_keep_the_old_value():
    cache = BriefCache("test-one-reload", watch=(), ttl=5)
    assert cache.get("k", lambda: "v1") == "v1"
    expired(cache, "k", by=6)
    loading, release, loads = threading.Event(), threading.Event(), []

    def slow_load():
        loads.append(1)
        loading.set()
        release.wait(5)
        return "v2"

    reloader = threading.Thread(target=lambda: cache.get("k", slow_load))
    reloader.start()
    assert loading.wait(5)
    started = time.monotonic()
    assert cache.get("k", lambda: loads.append(1) or "v3") == "v1", "the old value while another thread reloads"
    # Not waiting for the reload, which holds until released (5 s at most): a busy machine still answers in far less.
    assert time.monotonic() - started < 2.5 and loads == [1]
    release.set()
    reloader.join(5)
    assert cache.get("k", lambda: "v4") == "v2"


def test_it_reloads_itself_once_the_old_value_is_twice_the_ttl_old():
    cache = BriefCache("test-too-old", watch=(), ttl=5)
    cache.get("k", lambda: "v1")
    expired(cache, "k", by=11)
    cache._loading.add("k")  # a reload that never finished (its thread stuck)
    assert cache.get("k", lambda: "v2") == "v2"


def test_it_never_serves_a_value_from_before_an_edit():
    cache = BriefCache("test-edit", watch=(), ttl=5)
    cache.get("k", lambda: "before")
    expired(cache, "k", by=6)
    cache._loading.add("k")
    forget_all()  # a watched row saved in this process
    assert cache.get("k", lambda: "after") == "after"
    cache._loading.clear()
    assert cache.get("k", lambda: "never") == "after"


def test_it_keeps_no_entry_for_a_row_that_is_gone():
    cache = BriefCache("test-gone", watch=(), ttl=5)
    cache.get("k", lambda: "v1")
    expired(cache, "k", by=6)
    assert cache.get("k", lambda: None) is None
    assert cache.get("k", lambda: "back") == "back"


def test_it_hands_out_a_kept_tuple_as_it_is_and_a_copy_of_anything_else():
    from collections import namedtuple

    brief = namedtuple("Brief", "kind region")("mycrm", "FR")
    cache = BriefCache("test-immutable", watch=(), ttl=5)
    cache.get("t", lambda: brief)
    cache.get("l", lambda: ["a"])
    assert cache.get("t", lambda: None) is brief  # nothing to copy: it cannot change
    assert cache.get("l", lambda: None) == ["a"] and cache.get("l", lambda: None) is not cache._entries["l"][1]
