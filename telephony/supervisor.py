"""Holds the PBX event sockets inside a Celery worker process.

Sockets are not tasks: a task that never returns would be redelivered by the
Redis broker (acks_late) and two workers would hold the same socket. Instead a
bootstep starts one ``Supervisor`` per worker process. Every few seconds it
looks at the enabled accounts, makes sure their Listener rows exist, and takes
a Redis lease on each listener nobody holds. For each lease it holds it runs a
``ListenerRunner`` thread that logs in, opens the socket, feeds every burst of
frames to ``telephony.domain.apply_call_updates``, and reconnects with jittered
exponential backoff (capped at 60 s). Losing the lease stops the runner at once,
so a listener never has two owners for longer than one renew.

A runner thread sleeps in ``recv`` until a frame comes, so thousands of idle
sockets cost no CPU. Keep-alives do not wait for it: one ``KeepAlives`` thread
per supervisor sends every socket's on time, whatever its runner is doing (a
burst, a database outage). Stop and restart interrupt the socket to wake its
runner. Logins are bounded (``CONNECT_CONCURRENCY``) so a worker (re)starting
with thousands of sockets does not starve the sockets already held.
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
from concurrent.futures import Future

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from telephony import domain
from telephony.leases import LeaseStore
from telephony.models import Listener, PbxAccount
from telephony.providers import provider_class, provider_for
from telephony.providers.base import EventStream, ListenerSpec, ProviderError, StreamClosed
from telephony.updates import FrameRejected

logger = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 60.0
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


class DbWorkers:
    """The database work of every socket of this process, done by at most ``size`` threads.

    A worker holds thousands of sockets, one thread each, and PostgreSQL cannot give every one a
    connection (max_connections is 100 by default). So socket threads never touch the database:
    they hand each burst to this pool and wait for it (which keeps a socket's frames in order),
    and each pool thread keeps its one connection while work keeps coming. A slot a socket
    thread held until it had been quiet for a second starved the others at a frame a second per
    socket (a terminal's ordinary pace): pop-ups waited seconds for a slot.
    """

    def __init__(self, size: int):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"listener-db-{n}", daemon=True) for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, operation):
        """``operation()`` on a pool thread; its result, or its exception raised here."""
        future: Future = Future()
        self._queue.put((operation, future))
        return future.result()

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=DB_IDLE_SECONDS)
            except queue.Empty:
                connection.close()  # a quiet second: PostgreSQL gets the connection back
                continue
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


def backoff_delay(attempt: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """Full-jitter exponential backoff: spreads reconnects so a PBX restart is not a stampede."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 16))))


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
        attempt = 0
        try:
            while not self.stop_event.is_set():
                try:
                    self._hold_socket_once()
                    attempt = 0  # a clean end (asked to stop or restart)
                except StreamClosed as exc:
                    attempt = self._back_off(attempt, f"socket closed: {exc}")
                except ProviderError as exc:
                    if exc.permanent:
                        self._fail(str(exc))
                        return
                    attempt = self._back_off(attempt, str(exc))
                except Exception as exc:  # a bug must not kill the listener for good
                    logger.exception("listener crashed; reconnecting", extra=self._log_extra)
                    attempt = self._back_off(attempt, f"{exc.__class__.__name__}: {exc}")
        finally:
            connection.close()  # only a provider's catch-up at connect opens one here

    def _hold_socket_once(self) -> None:
        provider = provider_for(self.account)
        stream = None
        generation = self.generation = self.supervisor.restart_generation(self.account.pk)
        self._retry_db(lambda: domain.set_listener_state(
            self.listener_id, Listener.State.CONNECTING, owner=self.supervisor.owner))
        try:
            with self.supervisor.connect_slot(self.stop_event) as may_connect:
                if not may_connect:
                    return
                stream = provider.open_stream(self.spec)
                # A provider may read the database to catch up (myRCC: the calls that ended while we were
                # away). Only CONNECT_CONCURRENCY threads get here at once, and each gives its connection back.
                try:
                    initial_frames = list(getattr(stream, "initial_frames", ()) or ())
                finally:
                    connection.close()
            with self._stream_lock:
                self._stream = stream
            if self._should_end(generation):  # told while logging in, before there was a stream to interrupt
                return
            self.supervisor.keepalives.add(stream)
            opened = time.monotonic()
            self._retry_db(lambda: domain.set_listener_state(self.listener_id, Listener.State.CONNECTED, error=""))
            self._retry_db(lambda: domain.set_account_status(self.account.pk, PbxAccount.Status.CONNECTED))
            logger.info("listener connected", extra=self._log_extra)
            self._apply_burst(provider, initial_frames, opened)
            self._pump(provider, stream, generation)
        finally:
            if stream is not None:
                self.supervisor.keepalives.remove(stream)
            with self._stream_lock:
                self._stream = None
            self.generation = None
            try:
                provider.close_stream(self.spec, stream)
                provider.close()
            except Exception:  # the PBX may already be gone; cleanup is best effort
                logger.info("listener cleanup failed", extra=self._log_extra, exc_info=True)

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
        # A burst is only dropped once stored: a database outage is waited out.
        self._retry_db(lambda: domain.apply_call_updates(updates, received=received))
        self._retry_db(lambda: domain.touch_listener(self.listener_id, self.account.pk))

    def _retry_db(self, operation):
        while True:
            try:
                return db_workers().run(operation)
            except (OperationalError, InterfaceError) as exc:
                logger.warning("database unavailable (%s); retrying", exc, extra=self._log_extra)
                if self.stop_event.wait(DB_RETRY_SECONDS):
                    raise

    def _back_off(self, attempt: int, reason: str) -> int:
        delay = backoff_delay(attempt, cap=self.supervisor.backoff_cap_seconds)
        logger.warning("listener down (%s); reconnecting in %.1fs", reason, delay, extra=self._log_extra)
        def note_it():
            domain.set_listener_state(self.listener_id, Listener.State.BACKOFF, error=reason)
            domain.count_reconnect(self.listener_id)
            domain.set_account_status(self.account.pk, PbxAccount.Status.DEGRADED, reason)

        try:
            db_workers().run(note_it)
        except (OperationalError, InterfaceError):
            pass  # the admin's view of it waits for the database; the reconnect does not
        self.stop_event.wait(delay)
        return attempt + 1

    def _fail(self, reason: str) -> None:
        self.failed_permanently = True
        logger.error("listener failed and needs an admin: %s", reason, extra=self._log_extra)
        def note_it():
            domain.set_listener_state(self.listener_id, Listener.State.FAILED, error=reason)
            domain.set_account_status(self.account.pk, PbxAccount.Status.FAILED, reason)

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
        self.stop_event = threading.Event()
        self.runners: dict[int, ListenerRunner] = {}
        self._generations: dict[int, int] = {}
        self._redis = redis_client()
        self.leases = LeaseStore(self._redis, self.owner, self.ttl_ms)
        self.keepalives = KeepAlives(self.keepalive_seconds)
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
        for listener_id, runner in list(self.runners.items()):
            runner.join(timeout=5)
            try:
                domain.set_listener_state(listener_id, Listener.State.IDLE, owner="")
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
