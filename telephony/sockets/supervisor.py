"""Holds the PBX event sockets inside a Celery worker process.

Sockets are not tasks: a task that never returns would be redelivered by the
Redis broker (acks_late) and two workers would hold the same socket. Instead a
bootstep starts one ``Supervisor`` per worker process. Every few seconds it
looks at the enabled accounts, makes sure their Listener rows exist, and takes
a Redis lease on each listener nobody holds. For each lease it holds it runs a
``ListenerRunner`` thread that logs in, opens the socket, feeds every burst of
frames to ``telephony.domain.apply_call_updates``, and reconnects. Losing the
lease stops the runner at once, so a listener never has two owners for longer
than one renew.

Reconnects: the first after a socket that had been healthy (connected for
``HEALTHY_SECONDS``) is immediate, since calls placed while nobody listens are
lost. Failures in a row then wait a jittered delay that grows with how long the
listener has been down (a quarter of it, from ``BACKOFF_BASE_SECONDS`` up to
``LISTENER_BACKOFF_CAP_SECONDS``): a PBX restart is not a stampede, and a PBX back
after a short outage is reached again within a quarter of that outage. A socket the
PBX closes right after accepting it was never healthy, so it is no hot loop.

A runner thread sleeps in ``recv`` until a frame comes, so thousands of idle
sockets cost no CPU. Keep-alives do not wait for it: one ``KeepAlives`` thread
per supervisor sends every socket's on time, whatever its runner is doing (a
burst, a database outage). Stop and restart interrupt the socket to wake its
runner. Logins are bounded (``CONNECT_CONCURRENCY``) so a worker (re)starting
with thousands of sockets does not starve the sockets already held.

A PBX session may die while its socket lives: Istra expires sessions after a delay
without requests (pings are not requests) and may leave the socket open, answering
pings, with no frame ever again. So one ``SessionChecks`` thread sends every stream
that has a ``session_check`` (a cheap authenticated GET on its session) every
``ISTRA_SESSION_CHECK_SECONDS``, on a small pool of threads; a "session expired"
answer interrupts the stream, and its runner logs in and listens again at once.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import contextlib
import heapq
import itertools
import queue
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from telephony import domain, status
from telephony.sockets.leases import LeaseStore
from telephony.models import Listener, PbxAccount
from telephony.providers import provider_class, provider_for
from telephony.providers.base import EventStream, ListenerSpec, ProviderError, SessionExpired, StreamClosed
from telephony.updates import FrameRejected

logger = logging.getLogger(__name__)

#: The shortest reconnect delay bound after a failure (but the first after a healthy socket, which is 0).
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 60.0
#: The delay bound is this share of how long the listener has been down: back within a quarter of the outage.
DOWN_FRACTION = 0.25
#: A socket connected for this long was healthy: its loss reconnects at once. One the PBX closes sooner
#: (right after accepting it) counts as one more failure in a row, or it would reconnect in a hot loop.
HEALTHY_SECONDS = 1.5
DB_RETRY_SECONDS = 1.0
#: A database thread of the listeners closes its connection after this long without work.
DB_IDLE_SECONDS = 1.0
#: How long an idle runner sleeps in recv; stop, restart and keep-alive failures wake it sooner.
IDLE_RECV_SECONDS = 60.0
#: A burst is the frame that woke the runner plus those already waiting, within these bounds.
BURST_MAX_FRAMES = 200
BURST_MAX_SECONDS = 0.02
#: A socket the PBX has sent nothing on (not even a pong) for this many keep-alive intervals is dead:
#: a half-open TCP path gives no other sign. More than two, so one late keep-alive tick is not a death.
DEAD_AFTER_INTERVALS = 2.5
#: Logins (and socket opens) one worker runs at once.
CONNECT_CONCURRENCY = 8
#: Threads sending session checks (made as needed), and how many of them the sessions of one account may
#: hold at once: a PBX that answers slowly (or not, until the HTTP timeout) must not hold up other accounts'
#: checks. Four keep up with a myCrm account of 2,000 terminals at the default interval if a check takes
#: under 240 ms.
SESSION_CHECK_THREADS = 16
SESSION_CHECKS_PER_ACCOUNT = 4


class DbWorkers:
    """The database work of every socket of this process, done by at most ``size`` threads.

    A worker holds thousands of sockets, one thread each, and PostgreSQL cannot give every one a
    connection (max_connections is 100 by default). So socket threads never touch the database:
    they hand each burst to this pool and wait for it (which keeps a socket's frames in order),
    and each pool thread keeps its one connection while work keeps coming. A slot a socket
    thread held until it had been quiet for a second starved the others at a frame a second per
    socket (a terminal's ordinary pace): pop-ups waited seconds for a slot.

    Work goes to the thread that went idle last. Handed round all ``size`` threads in turn (one
    shared queue), a frame every tenth of a second reached each thread every two seconds, after it
    had closed its connection for a quiet second: most frames paid a new PostgreSQL connection.
    Last-idle-first keeps as few threads (and connections) busy as the load needs; the others
    close theirs after ``DB_IDLE_SECONDS``.
    """

    def __init__(self, size: int):
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []  # a stack: the thread idle the shortest time on top
        self._backlog: deque = deque()  # work that found every thread busy, oldest first
        self._threads = [
            threading.Thread(target=self._work, name=f"listener-db-{n}", daemon=True) for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, operation):
        """``operation()`` on a pool thread; its result, or its exception raised here."""
        future: Future = Future()
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                self._backlog.append((operation, future))
        if inbox is not None:
            inbox.put((operation, future))
        return future.result()

    def _work(self) -> None:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        while True:
            with self._lock:
                item = self._backlog.popleft() if self._backlog else None
                if item is None:
                    self._idle.append(inbox)
            if item is None:
                try:
                    item = inbox.get(timeout=DB_IDLE_SECONDS)
                except queue.Empty:
                    connection.close()  # a quiet second: PostgreSQL gets the connection back
                    item = inbox.get()  # still on the idle stack, below the busier threads
            operation, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = operation()
            except BaseException as exc:  # handed to the waiting socket thread, whatever it is
                if isinstance(exc, (OperationalError, InterfaceError)):
                    connection.close()  # the next operation reconnects
                future.set_exception(exc)
            else:
                future.set_result(result)


_db_workers: DbWorkers | None = None
_db_workers_lock = threading.Lock()
_db_workers_pid: int | None = None


def db_workers() -> DbWorkers:
    global _db_workers, _db_workers_pid
    with _db_workers_lock:
        if _db_workers is None or _db_workers_pid != os.getpid():  # a forked child has no threads
            _db_workers, _db_workers_pid = DbWorkers(settings.LISTENER_DB_CONNECTIONS), os.getpid()
        return _db_workers


def backoff_delay(seconds_down: float, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """How long to wait before the next try, after failures in a row for ``seconds_down`` seconds.

    The bound grows with the outage (``DOWN_FRACTION`` of it, between ``base`` and ``cap``), so a PBX
    back after 10 s is tried again within 2.5 s, and one down for minutes once a ``cap``. Jittered in
    [bound/2, bound]: a PBX restart is not a stampede, and no try comes at once after a failure.
    """
    bound = min(cap, max(base, DOWN_FRACTION * max(seconds_down, 0.0)))
    return random.uniform(bound / 2, bound)


def restart_key(account_id: int) -> str:
    return f"ctihub:account:{account_id}:restart"


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def request_restart(account_id: int) -> None:
    """Tell whichever worker holds the account's listeners to reconnect them."""
    client = redis_client()
    try:
        client.incr(restart_key(account_id))
    finally:
        client.close()


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


class ListenerRunner(threading.Thread):
    """One socket, reconnecting until told to stop."""

    def __init__(self, supervisor: "Supervisor", account: PbxAccount, listener: Listener, spec: ListenerSpec):
        super().__init__(name=f"listener-{listener.pk}", daemon=True)
        self.supervisor = supervisor
        self.account = account
        self.listener_id = listener.pk
        self.spec = spec
        self.stop_event = threading.Event()
        self.failed_permanently = False
        #: The account's restart generation this socket was opened under (None while not connected).
        self.generation: int | None = None
        self._stream: EventStream | None = None
        self._stream_lock = threading.Lock()
        self._log_extra = {"account_id": account.pk, "listener_id": listener.pk}
        #: How long the last socket stayed up after reaching CONNECTED, and whether the PBX said its session
        #: was gone: either makes its loss the first failure after a healthy socket.
        self._up_seconds = 0.0
        self._session_gone = False

    def stop(self) -> None:
        self.stop_event.set()
        self.interrupt("listener stopped")

    def interrupt(self, reason: str) -> None:
        """Wake the runner out of recv; it then looks at why (stop, restart) itself."""
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            stream.interrupt(reason)

    def run(self) -> None:
        down_since: float | None = None  # when the current run of failures began
        try:
            while not self.stop_event.is_set():
                try:
                    self._hold_socket_once()
                    down_since = None  # a clean end (asked to stop or restart)
                except StreamClosed as exc:
                    down_since = self._back_off(down_since, f"socket closed: {exc}")
                except ProviderError as exc:
                    if exc.permanent:
                        self._fail(str(exc))
                        return
                    down_since = self._back_off(down_since, str(exc))
                except Exception as exc:  # a bug must not kill the listener for good
                    logger.exception("listener crashed; reconnecting", extra=self._log_extra)
                    down_since = self._back_off(down_since, f"{exc.__class__.__name__}: {exc}")
        finally:
            connection.close()  # only a provider's catch-up at connect opens one here

    def _hold_socket_once(self) -> None:
        self._up_seconds, self._session_gone = 0.0, False
        connected_at = None
        provider = provider_for(self.account)
        stream = None
        generation = self.generation = self.supervisor.restart_generation(self.account.pk)
        self._retry_db(lambda: status.set_listener_state(
            self.listener_id, Listener.State.CONNECTING, owner=self.supervisor.owner))
        try:
            with self.supervisor.connect_slot(self.stop_event) as may_connect:
                if not may_connect:
                    return
                # A provider may read the database to log in (Istra: a login refused lately is not sent again)
                # and to catch up (myRCC: the calls that ended while we were away). Only CONNECT_CONCURRENCY
                # threads get here at once, and each gives its connection back, failed or not.
                try:
                    stream = provider.open_stream(self.spec)
                    initial_frames = list(getattr(stream, "initial_frames", ()) or ())
                finally:
                    connection.close()
            with self._stream_lock:
                self._stream = stream
            if self._should_end(generation):  # told while logging in, before there was a stream to interrupt
                return
            self.supervisor.keepalives.add(stream)
            self.supervisor.session_checks.add(stream, expired=lambda reason: self._session_expired(stream, reason),
                                               group=self.account.pk, log_extra=self._log_extra)
            opened = time.monotonic()
            self._retry_db(lambda: status.set_listener_state(self.listener_id, Listener.State.CONNECTED, error=""))
            self._retry_db(lambda: status.set_account_status(self.account.pk, PbxAccount.Status.CONNECTED))
            connected_at = time.monotonic()
            logger.info("listener connected", extra=self._log_extra)
            self._apply_burst(provider, initial_frames, opened)
            self._pump(provider, stream, generation)
        finally:
            if connected_at is not None:  # measured before the cleanup, which may wait on a slow PBX
                self._up_seconds = time.monotonic() - connected_at
            if stream is not None:
                self.supervisor.keepalives.remove(stream)
                self.supervisor.session_checks.remove(stream)
            with self._stream_lock:
                self._stream = None
            self.generation = None
            try:
                provider.close_stream(self.spec, stream)
                provider.close()
            except Exception:  # the PBX may already be gone; cleanup is best effort
                logger.info("listener cleanup failed", extra=self._log_extra, exc_info=True)

    def _session_expired(self, stream: EventStream, reason: str) -> None:
        """The PBX forgot the socket's session (it may keep the socket open): log in and listen again now."""
        self._session_gone = True
        stream.interrupt(reason)

    def _should_end(self, generation: int) -> bool:
        if self.stop_event.is_set():
            return True
        if self.supervisor.restart_generation(self.account.pk) != generation:
            logger.info("listener restart requested", extra=self._log_extra)
            return True
        return False

    def _pump(self, provider, stream: EventStream, generation: int) -> None:
        while not self._should_end(generation):
            try:
                text = stream.recv(IDLE_RECV_SECONDS)
            except StreamClosed:
                if self._should_end(generation):
                    return  # we interrupted it ourselves
                raise
            if text is None:
                continue
            received = time.monotonic()
            texts, closed = self._rest_of_burst(stream, received)
            self._apply_burst(provider, [text, *texts], received)
            if closed is not None:
                if self._should_end(generation):
                    return
                raise closed

    def _rest_of_burst(self, stream: EventStream, received: float) -> tuple[list[str], StreamClosed | None]:
        """The frames already waiting behind the first; a close after them is returned, not lost with them."""
        texts: list[str] = []
        deadline = received + BURST_MAX_SECONDS
        try:
            while len(texts) < BURST_MAX_FRAMES - 1 and stream.pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                text = stream.recv(remaining)
                if text is None:
                    break
                texts.append(text)
        except StreamClosed as exc:
            return texts, exc
        return texts, None

    def _apply_burst(self, provider, texts: list[str], received: float) -> None:
        """Parse every frame (a rejected one is skipped alone) and store the lot in one transaction."""
        updates = []
        for text in texts:
            try:
                updates.extend(provider.parse_frame(text, self.spec))
            except FrameRejected as exc:
                logger.warning("frame rejected: %s", exc, extra=self._log_extra)
        if not updates:
            return
        # A burst is only dropped once stored: a database outage is waited out. Its "last event" is
        # written on the same hop to the database thread (one hop a frame, not two); if only that
        # write fails, it alone is retried, the burst is not applied again.
        def store() -> bool:
            domain.apply_call_updates(updates, received=received)
            try:
                status.touch_listener(self.listener_id, self.account.pk)
            except (OperationalError, InterfaceError):
                connection.close()
                return False
            return True

        if not self._retry_db(store):
            self._retry_db(lambda: status.touch_listener(self.listener_id, self.account.pk))

    def _retry_db(self, operation):
        while True:
            try:
                return db_workers().run(operation)
            except (OperationalError, InterfaceError) as exc:
                logger.warning("database unavailable (%s); retrying", exc, extra=self._log_extra)
                if self.stop_event.wait(DB_RETRY_SECONDS):
                    raise

    def _back_off(self, down_since: float | None, reason: str) -> float:
        """Note the failure, wait before the next try, and return when this run of failures began.

        The first failure after a healthy socket (connected ``HEALTHY_SECONDS``, or ended because its
        session expired) reconnects at once: calls placed while nobody listens are lost. Each failure
        in a row after it waits ``backoff_delay`` of the time since then.
        """
        now = time.monotonic()
        healthy = self._session_gone or self._up_seconds >= HEALTHY_SECONDS
        if healthy or down_since is None:
            down_since = now
        if healthy:
            delay = 0.0
            logger.warning("listener down (%s); reconnecting now", reason, extra=self._log_extra)
        else:
            cap = self.supervisor.backoff_cap_seconds
            delay = backoff_delay(now - down_since, base=BACKOFF_BASE_SECONDS, cap=cap)
            logger.warning("listener down (%s); reconnecting in %.1fs", reason, delay, extra=self._log_extra)
        def note_it():
            status.set_listener_state(self.listener_id, Listener.State.BACKOFF, error=reason)
            status.count_reconnect(self.listener_id)
            status.set_account_status(self.account.pk, PbxAccount.Status.DEGRADED, reason)

        try:
            db_workers().run(note_it)
        except (OperationalError, InterfaceError):
            pass  # the admin's view of it waits for the database; the reconnect does not
        if delay > 0:
            self.stop_event.wait(delay)
        return down_since

    def _fail(self, reason: str) -> None:
        self.failed_permanently = True
        logger.error("listener failed and needs an admin: %s", reason, extra=self._log_extra)
        def note_it():
            status.set_listener_state(self.listener_id, Listener.State.FAILED, error=reason)
            status.set_account_status(self.account.pk, PbxAccount.Status.FAILED, reason)

        self._retry_db(note_it)


class Supervisor(threading.Thread):
    """Finds listeners nobody holds, leases them, and runs them; renews what it holds."""

    def __init__(self, owner: str | None = None):
        super().__init__(name="listener-supervisor", daemon=True)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.ttl_ms = settings.LISTENER_LEASE_TTL_MS
        self.scan_seconds = settings.LISTENER_SCAN_SECONDS
        self.keepalive_seconds = settings.LISTENER_KEEPALIVE_SECONDS
        self.backoff_cap_seconds = settings.LISTENER_BACKOFF_CAP_SECONDS
        self.max_held = settings.LISTENER_MAX_PER_WORKER  # 0: every free listener this worker finds
        self.stop_event = threading.Event()
        self.runners: dict[int, ListenerRunner] = {}
        self._generations: dict[int, int] = {}
        self._redis = redis_client()
        self.leases = LeaseStore(self._redis, self.owner, self.ttl_ms)
        self.keepalives = KeepAlives(self.keepalive_seconds)
        self.session_checks = SessionChecks(settings.ISTRA_SESSION_CHECK_SECONDS)
        self._connects = threading.BoundedSemaphore(CONNECT_CONCURRENCY)
        # Redis restarted empty holds no leases: a listener looks free though its owner still reads it.
        # Until one TTL after the last Redis error seen here, only leases already held are taken (back).
        self._take_new_after = 0.0

    def restart_generation(self, account_id: int) -> int:
        return self._generations.get(account_id, 0)

    @contextlib.contextmanager
    def connect_slot(self, stop_event: threading.Event):
        """One of ``CONNECT_CONCURRENCY`` places to log in and open a socket; False if stopped while waiting."""
        while not self._connects.acquire(timeout=0.5):
            if stop_event.is_set():
                yield False
                return
        try:
            yield True
        finally:
            self._connects.release()

    def run(self) -> None:
        logger.info("listener supervisor %s started", self.owner)
        self.keepalives.start()
        self.session_checks.start()
        renew_every = self.ttl_ms / 3000
        next_scan = 0.0
        while not self.stop_event.is_set():
            try:
                self._renew_leases()
                if time.monotonic() >= next_scan:
                    self._scan()
                    next_scan = time.monotonic() + self.scan_seconds
            except redis.RedisError as exc:
                self._take_new_after = time.monotonic() + self.ttl_ms / 1000
                logger.warning("supervisor cycle failed (%s); retrying", exc)
            except (OperationalError, InterfaceError) as exc:
                logger.warning("supervisor cycle failed (%s); retrying", exc)
                close_old_connections()
            except Exception:
                logger.exception("supervisor cycle crashed; retrying")
            self.stop_event.wait(min(renew_every, self.scan_seconds))
        self._stop_all()

    def stop(self, timeout: float = 10) -> None:
        self.stop_event.set()
        self.join(timeout)

    def _renew_leases(self) -> None:
        for listener_id, runner in list(self.runners.items()):
            if not runner.is_alive():
                self._forget(listener_id)
        renewed = self.leases.renew_many(list(self.runners))
        for listener_id, held in renewed.items():
            if not held:
                logger.warning("lost the lease on listener %s; stopping it", listener_id)
                self.runners.pop(listener_id).stop()

    def _scan(self) -> None:
        close_old_connections()
        accounts = [a for a in PbxAccount.objects.filter(enabled=True) if provider_class(a.kind).holds_sockets]
        self._refresh_generations([a.pk for a in accounts])
        wanted: set[int] = set()
        for account in accounts:
            provider = provider_for(account)
            for listener, spec in _ensure_listeners(account, provider):
                wanted.add(listener.pk)
                if listener.pk in self.runners or listener.state == Listener.State.FAILED:
                    continue
                if time.monotonic() < self._take_new_after:
                    continue
                if self.max_held and len(self.runners) >= self.max_held:
                    continue  # left free for another worker (LISTENER_MAX_PER_WORKER)
                if self.leases.acquire(listener.pk):
                    self._start_runner(account, listener, spec)
        for listener_id in set(self.runners) - wanted:
            logger.info("listener %s no longer needed; stopping it", listener_id)
            self.runners[listener_id].stop()
            self._forget(listener_id)

    def _refresh_generations(self, account_ids: list[int]) -> None:
        if not account_ids:
            return
        values = self._redis.mget([restart_key(a) for a in account_ids])
        self._generations = {a: int(v or 0) for a, v in zip(account_ids, values)}
        for runner in list(self.runners.values()):
            opened_under = runner.generation
            if opened_under is not None and opened_under != self.restart_generation(runner.account.pk):
                runner.interrupt("restart requested")

    def _start_runner(self, account: PbxAccount, listener: Listener, spec: ListenerSpec) -> None:
        runner = ListenerRunner(self, account, listener, spec)
        self.runners[listener.pk] = runner
        runner.start()

    def _forget(self, listener_id: int) -> None:
        self.runners.pop(listener_id, None)
        self.leases.release(listener_id)

    def _stop_all(self) -> None:
        for runner in self.runners.values():
            runner.stop()
        self.keepalives.stop()
        self.session_checks.stop()
        for listener_id, runner in list(self.runners.items()):
            runner.join(timeout=5)
            try:
                status.set_listener_state(listener_id, Listener.State.IDLE, owner="")
            except Exception:
                logger.info("could not mark listener %s idle", listener_id)
            self.leases.release(listener_id)
        self.runners.clear()
        self._redis.close()
        connection.close()  # this thread's, from scanning: it would outlive the thread
        logger.info("listener supervisor %s stopped", self.owner)


def _ensure_listeners(account, provider):
    from telephony.control import ensure_listeners

    return ensure_listeners(account, provider)
