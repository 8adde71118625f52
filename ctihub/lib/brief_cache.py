"""Rows a hot endpoint looks up on every request, kept in the process for a few seconds.

makeCallUrl found its integration, agent and terminal with four queries per request, half
of its CPU at 200 requests/s, for rows that change only when an admin edits them. A
``BriefCache`` keeps what a look-up found for ``ttl`` seconds. Saving or deleting a row of
a watched model (or changing one of its many-to-many links) empties every cache of this
process at once, so an edit made here counts at once; other processes (more daphne
workers, the admin served elsewhere) see it within ``ttl`` seconds. A look-up that found
nothing is not kept: a stream of wrong keys must not fill the memory or hide a row just created.

Callers get a copy of the cached instance, never the instance itself: a view may set
attributes on what it got (``set_agent_status`` does) while another thread reads the same row.
A tuple (a named one too) is handed out as it is kept: it cannot be changed.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from django.db.models import Model
from django.db.models.signals import m2m_changed, post_delete, post_save

T = TypeVar("T")

_lock = threading.Lock()
_generation = 0  # bumped by every watched change; a value loaded before the bump is not kept
_caches: list[BriefCache] = []
_watched: set[type] = set()


class BriefCache:
    def __init__(self, name: str, *, watch: tuple[type, ...], ttl: float = 5.0, max_entries: int = 1024):
        self.name = name
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, object]] = {}
        self._loading: set[Hashable] = set()  # keys a thread is reloading right now
        with _lock:
            _caches.append(self)
        for model in watch:
            _watch(model)

    def get(self, key: Hashable, load: Callable[[], T | None]) -> T | None:
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return copy_value(hit[1])
        with _lock:
            # One thread reloads an expired entry; the others keep the value it replaces meanwhile. When
            # all of them reloaded at once, makeCallUrl stalled 20-60 ms every ttl at 200 requests/s.
            reloading = hit is not None and key in self._loading and now - hit[0] < 2 * self.ttl
            if not reloading:
                self._loading.add(key)
        if reloading:
            return copy_value(hit[1])
        try:
            generation = _generation
            value = load()
            if value is None:
                self._entries.pop(key, None)
                return None
            with _lock:
                if generation == _generation:
                    if key not in self._entries and len(self._entries) >= self.max_entries:
                        self._entries.pop(next(iter(self._entries)))  # the oldest key
                    self._entries[key] = (now, copy_value(value))
            return value
        finally:
            with _lock:
                self._loading.discard(key)

    def clear(self) -> None:
        with _lock:
            self._entries.clear()


def copy_value(value):
    """``copy.copy``; for a model instance, the same copy in half the time (the domain's snapshot of a call at
    each change uses it too).

    ``copy.copy`` of a model goes through ``Model.__reduce__``: ``__getstate__`` (its ``__dict__``
    with its own ``_state`` and fields cache) and then ``model_unpickle``, which looks the model up
    in the app registry again, and ``__setstate__``. makeCallUrl copies five cached values a request.
    """
    if isinstance(value, tuple):  # immutable: a named tuple's copy.copy would build it again
        return value
    if isinstance(value, Model):
        state = value.__getstate__()
        if "_memoryview_attrs" not in state:  # those __setstate__ turns back into memoryviews
            new = value.__class__.__new__(value.__class__)
            new.__dict__.update(state)
            return new
    return copy.copy(value)


def forget_all(**_signal_kwargs) -> None:
    global _generation
    with _lock:
        _generation += 1
        for cache in _caches:
            cache._entries.clear()


def _watch(model: type) -> None:
    with _lock:
        if model in _watched:
            return
        _watched.add(model)
    uid = f"brief-cache-{model._meta.label}"
    post_save.connect(forget_all, sender=model, weak=False, dispatch_uid=uid)
    post_delete.connect(forget_all, sender=model, weak=False, dispatch_uid=uid)
    for field in model._meta.many_to_many:
        m2m_changed.connect(forget_all, sender=field.remote_field.through, weak=False, dispatch_uid=uid)
