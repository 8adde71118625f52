"""daphne's consoles kept out of the garbage collector's full walks (issue 16, pop-up saturation, third pass).

A console's objects (Twisted's and autobahn's protocol, the ASGI scope, the session, the viewer, the consumer
and its tasks and buffers) live as long as its socket: hundreds of objects each, most of daphne's heap at
1,000 consoles. Python's collector walks all of them in a full collection, every thread of the process
stopped: 129 ms of CPU (190 ms on the clock) at 1,000 consoles, once the consoles of a connect storm were
promoted to the oldest generation; every card in flight then, and those that queued behind it, was late by
as much (the benchmark's p99).

So, as ctihub/asgi.py does with what daphne loaded to start, a wave of console setups is frozen
(``gc.freeze``) once it has settled (``FREEZE_AFTER_SECONDS`` after the last setup, at most
``FREEZE_AT_MOST_AFTER_SECONDS`` after the first one of the wave): full collections then walk only what came
after. Frozen objects are still freed when their last reference goes; only those of a closed console held
in a reference cycle wait for the collector, so once the consoles closed since the last thaw reach
``THAW_SHARE`` of those set up (at least ``THAW_AT_LEAST``), everything is unfrozen, collected once (that
pause, as Python's own rule would have made it after as much growth) and frozen again.
"""

from __future__ import annotations

import asyncio
import gc as _gc
import logging
import time
import weakref

logger = logging.getLogger(__name__)

FREEZE_AFTER_SECONDS = 2.0
FREEZE_AT_MOST_AFTER_SECONDS = 10.0
THAW_SHARE = 0.25
THAW_AT_LEAST = 50


class ConsoleHeap:
    """One per event loop (a daphne process): told of each console set up and closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gc=_gc):
        self.loop = loop
        self.gc = gc
        self.live = 0  # consoles set up and not closed
        self.closed_since_thaw = 0
        self.live_at_thaw = 0
        self._wave_started: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._thaw = False

    def set_up(self) -> None:
        self.live += 1
        now = time.monotonic()
        if self._wave_started is None:
            self._wave_started = now
        self._schedule(min(FREEZE_AFTER_SECONDS, self._wave_started + FREEZE_AT_MOST_AFTER_SECONDS - now))

    def closed(self) -> None:
        self.live = max(0, self.live - 1)
        self.closed_since_thaw += 1
        if self.closed_since_thaw >= max(THAW_AT_LEAST, THAW_SHARE * max(self.live_at_thaw, self.live)):
            self._thaw = True
            if self._wave_started is None:
                self._wave_started = time.monotonic()
            self._schedule(FREEZE_AFTER_SECONDS)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(max(0.0, delay), self.settle)

    def settle(self) -> None:
        """Freeze what the consoles set up since the last time made; after enough closes, collect first."""
        self._timer, self._wave_started = None, None
        if self._thaw:
            self._thaw = False
            started = time.perf_counter()
            self.gc.unfreeze()
            self.gc.collect()
            self.closed_since_thaw, self.live_at_thaw = 0, self.live
            logger.info("consoles' heap collected in %.0f ms (%s consoles)", (time.perf_counter() - started) * 1000,
                        self.live)
        elif not self.live_at_thaw:
            self.live_at_thaw = self.live
        self.gc.collect(1)  # the young garbage of the wave (cheap), so that it is not frozen with the rest
        self.gc.freeze()


_heaps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its ConsoleHeap


class _Off:
    def set_up(self) -> None:
        pass

    def closed(self) -> None:
        pass


def console_heap() -> ConsoleHeap | _Off:
    """This event loop's, or one that does nothing with ``CONSOLE_HEAP_FREEZE`` off (the tests' own process:
    a frozen heap there would keep every test's cyclic garbage to the end of the run)."""
    from django.conf import settings

    if not settings.CONSOLE_HEAP_FREEZE:
        return _Off()
    loop = asyncio.get_running_loop()
    found = _heaps.get(loop)
    if found is None:
        found = _heaps[loop] = ConsoleHeap(loop)
    return found
