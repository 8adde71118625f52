"""Keep-alives and session checks: one thread each per supervisor, for every socket it holds,
whatever the socket's runner is doing (see ``telephony.sockets.supervisor``)."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from telephony.providers.base import EventStream, ProviderError, SessionExpired, StreamClosed

logger = logging.getLogger(__name__)

#: A socket the PBX has sent nothing on (not even a pong) for this many keep-alive intervals is dead:
#: a half-open TCP path gives no other sign. More than two, so one late keep-alive tick is not a death.
DEAD_AFTER_INTERVALS = 2.5
#: Threads sending session checks (made as needed), and how many of them the sessions of one account may
#: hold at once: a PBX that answers slowly (or not, until the HTTP timeout) must not hold up other accounts'
#: checks. Four keep up with a myCrm account of 2,000 terminals at the default interval if a check takes
#: under 240 ms.
SESSION_CHECK_THREADS = 16
SESSION_CHECKS_PER_ACCOUNT = 4


class KeepAlives(threading.Thread):
    """Sends each registered stream's keep-alive every ``interval`` seconds, from one thread.

    A heap of due times: the thread sleeps until the earliest, so 2,000 sockets cost 2,000 / interval
    sends a second and nothing else. A keep-alive that fails, or a socket that stopped answering them,
    interrupts its stream, which wakes the runner to reconnect.
    """

    def __init__(self, interval: float):
        super().__init__(name="listener-keepalives", daemon=True)
        self.interval = interval
        self._due: list[tuple[float, int, EventStream]] = []
        self._live: set[EventStream] = set()
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False

    def add(self, stream: EventStream) -> None:
        with self._wake:
            self._live.add(stream)
            heapq.heappush(self._due, (time.monotonic() + self.interval, next(self._order), stream))
            self._wake.notify()

    def remove(self, stream: EventStream) -> None:
        with self._wake:
            self._live.discard(stream)

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()

    def run(self) -> None:
        while True:
            with self._wake:
                due = self._take_due()
                if due is None:
                    return
            for when, stream in due:
                self._send(when, stream)

    def _take_due(self) -> list[tuple[float, EventStream]] | None:
        while not self._stopping:
            now = time.monotonic()
            while self._due and self._due[0][2] not in self._live:
                heapq.heappop(self._due)  # removed since it was scheduled
            if self._due and self._due[0][0] <= now:
                due = []
                while self._due and self._due[0][0] <= now:
                    when, _, stream = heapq.heappop(self._due)
                    if stream in self._live:
                        due.append((when, stream))
                return due
            self._wake.wait(self._due[0][0] - now if self._due else None)
        return None

    def _send(self, when: float, stream: EventStream) -> None:
        quiet = stream.quiet_seconds()
        if quiet > DEAD_AFTER_INTERVALS * self.interval:
            self.remove(stream)
            stream.interrupt(f"no answer from the PBX for {quiet:.0f} s")
            return
        try:
            stream.keepalive()
        except StreamClosed as exc:
            self.remove(stream)
            stream.interrupt(str(exc))
            return
        except Exception:  # one broken stream must not stop the others' keep-alives
            logger.exception("keep-alive failed")
            self.remove(stream)
            stream.interrupt("keep-alive failed")
            return
        now = time.monotonic()
        # On the original cadence; if this one was more than an interval late, start again from now.
        following = when + self.interval if when + self.interval > now else now + self.interval
        with self._wake:
            if stream in self._live:
                heapq.heappush(self._due, (following, next(self._order), stream))


@dataclass
class _Checked:
    """A stream registered with ``SessionChecks``: what to do when its session is gone, and whose it is."""

    expired: Callable[[str], None]
    group: Hashable
    log_extra: dict


class SessionChecks(threading.Thread):
    """Calls each registered stream's ``session_check`` every ``interval`` seconds.

    One thread keeps a heap of due times, as ``KeepAlives`` does, but hands the checks (HTTP requests
    that wait on the PBX up to the HTTP timeout) to a pool of ``threads``, so a slow PBX delays neither
    the heap nor other streams' checks; one ``group`` (an account) holds at most ``per_group`` of the
    pool, its other due checks wait their turn. A stream has one check at a time: the next is due an
    interval after the one before was due (or after it ended, if it ended later than that).

    SessionExpired means the PBX forgot the session: the stream's ``expired`` callback runs (it
    interrupts the stream, so its runner logs in again) and the stream is checked no more. Any other
    failure (a 503, a timeout) says nothing sure about the session; the keep-alives judge the socket.
    """

    def __init__(self, interval: float, threads: int = SESSION_CHECK_THREADS,
                 per_group: int = SESSION_CHECKS_PER_ACCOUNT):
        super().__init__(name="listener-session-checks", daemon=True)
        self.interval = interval
        self.per_group = per_group
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="listener-session-check")
        self._due: list[tuple[float, int, EventStream]] = []
        self._live: dict[EventStream, _Checked] = {}
        self._running: Counter = Counter()  # checks in the pool, per group
        self._waiting: dict[Hashable, deque[tuple[float, EventStream]]] = {}  # due, but their group is busy
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False

    def add(self, stream: EventStream, *, expired: Callable[[str], None] | None = None,
            group: Hashable = None, log_extra: dict | None = None) -> None:
        """Check ``stream`` from one interval on; nothing if it has no ``session_check``.

        ``expired(reason)`` runs when the PBX says the session is gone (default: interrupt the stream);
        ``group`` is what shares ``per_group`` (default: the stream alone); ``log_extra`` names it in logs.
        """
        if getattr(stream, "session_check", None) is None:
            return
        with self._wake:
            self._live[stream] = _Checked(expired or stream.interrupt, stream if group is None else group,
                                          log_extra or {})
            heapq.heappush(self._due, (time.monotonic() + self.interval, next(self._order), stream))
            self._wake.notify()

    def remove(self, stream: EventStream) -> None:
        with self._wake:
            self._live.pop(stream, None)

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._start_due():
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                if self._stopping:
                    return

    def _start_due(self) -> bool:
        """Start (or queue behind their group) the checks due now; False if none was due. Lock held."""
        now, started = time.monotonic(), False
        while self._due and (self._due[0][2] not in self._live or self._due[0][0] <= now):
            when, _, stream = heapq.heappop(self._due)
            checked = self._live.get(stream)
            if checked is None:
                continue  # removed since it was scheduled
            started = True
            if self._running[checked.group] < self.per_group:
                self._submit(when, stream, checked)
            else:
                self._waiting.setdefault(checked.group, deque()).append((when, stream))
        return started

    def _submit(self, when: float, stream: EventStream, checked: _Checked) -> None:
        self._running[checked.group] += 1
        try:
            self._pool.submit(self._check, when, stream, checked)
        except RuntimeError:  # the pool is shut down: the supervisor is stopping
            self._running[checked.group] -= 1

    def _check(self, when: float, stream: EventStream, checked: _Checked) -> None:
        try:
            self._ask(stream, checked)
        finally:
            with self._wake:
                self._running[checked.group] -= 1
                if not self._running[checked.group]:
                    del self._running[checked.group]
                if self._live.get(stream) is checked:
                    now = time.monotonic()
                    following = when + self.interval if when + self.interval > now else now + self.interval
                    heapq.heappush(self._due, (following, next(self._order), stream))
                    self._wake.notify()
                self._start_waiting(checked.group)

    def _start_waiting(self, group: Hashable) -> None:
        """The next check of ``group`` that waited for a place in the pool. Lock held."""
        waiting = self._waiting.get(group)
        while waiting and self._running[group] < self.per_group:
            when, stream = waiting.popleft()
            checked = self._live.get(stream)
            if checked is not None:
                self._submit(when, stream, checked)
        if waiting is not None and not waiting:
            del self._waiting[group]

    def _ask(self, stream: EventStream, checked: _Checked) -> None:
        try:
            stream.session_check()
        except SessionExpired as exc:
            with self._wake:
                # Removed meanwhile: its runner is closing it (and logging out), not our business.
                gone = self._live.get(stream) is checked and self._live.pop(stream)
            if gone:
                logger.warning("session expired at the PBX; logging in again (%s)", exc, extra=checked.log_extra)
                checked.expired(f"session expired at the PBX: {exc}")
        except ProviderError as exc:
            logger.info("session check failed (%s); the keep-alives judge the socket", exc, extra=checked.log_extra)
        except Exception:  # one broken check must not stop the others
            logger.exception("session check crashed", extra=checked.log_extra)
