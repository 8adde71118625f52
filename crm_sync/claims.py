"""Short leases kept alive while their holder works: a call's events claim, an outbox batch's claim,
an integration's drain lock.

A worker that dies holding one of them (killed, out of memory, its machine gone) stops renewing it, and
the work is free again after ``CLAIM_LEASE``: the sweep or the next task finds it. With a lease long
enough to outlive any single send (the five minutes these had), a worker killed in the middle of a
drain held every finished call of its integration back for five minutes, and the drain lock made the
other workers wait for it rather than upload.

One thread per process renews every lease its threads hold, every ``RENEW_EVERY`` seconds; most holds
end in milliseconds and are never renewed, so the hot path pays two dict operations.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

logger = logging.getLogger(__name__)

# Six renewals fit in a lease: a keeper held back by a busy process (the GIL, a slow database) for
# 25 s still renews in time. A claim lapsing under a live holder could send an event twice; one not
# renewed after its holder died delays the call by this much at most.
CLAIM_LEASE = timedelta(seconds=30)
RENEW_EVERY = 5.0


class LeaseKeeper:
    """Calls each registered ``renew`` every ``every`` seconds, in one daemon thread, until it is released."""

    def __init__(self, every: float = RENEW_EVERY):
        self.every = every
        self._lock = threading.Lock()
        self._held: dict[int, tuple[str, Callable[[], object]]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    @contextmanager
    def keep(self, what: str, renew: Callable[[], object]) -> Iterator[None]:
        """Hold ``renew`` while the block runs; ``what`` names the lease in the logs."""
        key = next(self._ids)
        with self._lock:
            self._held[key] = (what, renew)
            self._ensure_thread()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(key, None)

    def held(self) -> list[str]:
        with self._lock:
            return [what for what, _ in self._held.values()]

    def renew_all(self) -> int:
        """Renew every lease held now; the number renewed (a failing one is logged and tried next time)."""
        with self._lock:
            held = list(self._held.values())
        renewed = 0
        try:
            for what, renew in held:
                try:
                    renew()
                    renewed += 1
                except Exception:
                    logger.warning("could not renew the lease of %s; trying again in %.0f s", what, self.every,
                                   exc_info=True)
        finally:
            if held:
                _close_db_connections()
        return renewed

    def _ensure_thread(self) -> None:
        # A forked child inherits the object but not the thread.
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="crm-lease-keeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            if self._held:
                self.renew_all()


def _close_db_connections() -> None:
    """The keeper's connection is closed after each round: it works every few seconds at most, and an
    idle one held open would keep a test database from being dropped."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        conn.close()


keeper = LeaseKeeper()
