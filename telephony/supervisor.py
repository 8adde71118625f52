"""Holds the PBX event sockets inside a Celery worker process.

Sockets are not tasks: a task that never returns would be redelivered by the
Redis broker (acks_late) and two workers would hold the same socket. Instead a
bootstep starts one ``Supervisor`` per worker process. Every few seconds it
looks at the enabled accounts, makes sure their Listener rows exist, and takes
a Redis lease on each listener nobody holds. For each lease it holds it runs a
``ListenerRunner`` thread that logs in, opens the socket, feeds every frame to
``telephony.domain.apply_call_update``, sends keep-alives, and reconnects with
jittered exponential backoff (capped at 60 s). Losing the lease stops the
runner at once, so a listener never has two owners for longer than one renew.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid

import redis
from django.conf import settings
from django.db import OperationalError, InterfaceError, close_old_connections

from telephony import domain
from telephony.leases import LeaseStore
from telephony.models import Listener, PbxAccount
from telephony.providers import provider_class, provider_for
from telephony.providers.base import ListenerSpec, ProviderError, StreamClosed
from telephony.updates import FrameRejected

logger = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 60.0
RECV_SLICE_SECONDS = 1.0
DB_RETRY_SECONDS = 1.0


class DbSlots:
    """At most ``size`` listener threads of this process hold a database connection at once.

    A worker holds thousands of sockets, one thread each, and PostgreSQL cannot give every one a
    connection (max_connections is 100 by default). A thread takes a slot before its first query,
    keeps it (and its connection, so a burst of frames pays no reconnect) while frames keep coming,
    and gives both back after a second without frames or before it waits on the network.
    """

    def __init__(self, size: int):
        self._semaphore = threading.BoundedSemaphore(size)
        self._held = threading.local()

    def take(self) -> None:
        if not getattr(self._held, "slot", False):
            self._semaphore.acquire()
            self._held.slot = True

    def give_back(self) -> None:
        if getattr(self._held, "slot", False):
            from django.db import connection

            if not connection.in_atomic_block:
                connection.close()
            self._held.slot = False
            self._semaphore.release()


_db_slots: DbSlots | None = None
_db_slots_lock = threading.Lock()


def db_slots() -> DbSlots:
    global _db_slots
    with _db_slots_lock:
        if _db_slots is None:
            _db_slots = DbSlots(settings.LISTENER_DB_CONNECTIONS)
        return _db_slots


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
        self._log_extra = {"account_id": account.pk, "listener_id": listener.pk}

    def stop(self) -> None:
        self.stop_event.set()

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
            db_slots().give_back()
            close_old_connections()

    def _hold_socket_once(self) -> None:
        provider = provider_for(self.account)
        stream = None
        self._retry_db(lambda: domain.set_listener_state(
            self.listener_id, Listener.State.CONNECTING, owner=self.supervisor.owner))
        db_slots().give_back()  # logging in and opening the socket take a while: no connection meanwhile
        try:
            stream = provider.open_stream(self.spec)
            self._retry_db(lambda: domain.set_listener_state(self.listener_id, Listener.State.CONNECTED, error=""))
            self._retry_db(lambda: domain.set_account_status(self.account.pk, PbxAccount.Status.CONNECTED))
            logger.info("listener connected", extra=self._log_extra)
            for text in getattr(stream, "initial_frames", ()) or ():
                self._handle_frame(provider, text)
            self._pump(provider, stream)
        finally:
            try:
                provider.close_stream(self.spec, stream)
                provider.close()
            except Exception:  # the PBX may already be gone; cleanup is best effort
                logger.info("listener cleanup failed", extra=self._log_extra, exc_info=True)

    def _pump(self, provider, stream) -> None:
        keepalive_every = self.supervisor.keepalive_seconds
        next_keepalive = time.monotonic() + keepalive_every
        generation = self.supervisor.restart_generation(self.account.pk)
        while not self.stop_event.is_set():
            text = stream.recv(RECV_SLICE_SECONDS)
            if text is not None:
                self._handle_frame(provider, text)
            else:
                db_slots().give_back()  # a second without frames: let another socket's thread have it
            now = time.monotonic()
            if now >= next_keepalive:
                stream.keepalive()
                next_keepalive = now + keepalive_every
            if self.supervisor.restart_generation(self.account.pk) != generation:
                logger.info("listener restart requested", extra=self._log_extra)
                return

    def _handle_frame(self, provider, text: str) -> None:
        try:
            updates = provider.parse_frame(text, self.spec)
        except FrameRejected as exc:
            logger.warning("frame rejected: %s", exc, extra=self._log_extra)
            return
        for update in updates:
            self._apply_until_stored(update)
        if updates:
            self._retry_db(lambda: domain.touch_listener(self.listener_id, self.account.pk))

    def _apply_until_stored(self, update) -> None:
        """A frame is only dropped if it was stored: a database outage is waited out."""
        self._retry_db(lambda: domain.apply_call_update(update))

    def _retry_db(self, operation):
        db_slots().take()
        while True:
            try:
                return operation()
            except (OperationalError, InterfaceError) as exc:
                logger.warning("database unavailable (%s); retrying", exc, extra=self._log_extra)
                close_old_connections()
                from django.db import connection

                connection.close()
                if self.stop_event.wait(DB_RETRY_SECONDS):
                    raise

    def _back_off(self, attempt: int, reason: str) -> int:
        delay = backoff_delay(attempt, cap=self.supervisor.backoff_cap_seconds)
        logger.warning("listener down (%s); reconnecting in %.1fs", reason, delay, extra=self._log_extra)
        db_slots().take()
        try:
            domain.set_listener_state(self.listener_id, Listener.State.BACKOFF, error=reason)
            domain.count_reconnect(self.listener_id)
            domain.set_account_status(self.account.pk, PbxAccount.Status.DEGRADED, reason)
        except (OperationalError, InterfaceError):
            close_old_connections()
        db_slots().give_back()
        self.stop_event.wait(delay)
        return attempt + 1

    def _fail(self, reason: str) -> None:
        self.failed_permanently = True
        logger.error("listener failed and needs an admin: %s", reason, extra=self._log_extra)
        db_slots().take()
        domain.set_listener_state(self.listener_id, Listener.State.FAILED, error=reason)
        domain.set_account_status(self.account.pk, PbxAccount.Status.FAILED, reason)


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

    def restart_generation(self, account_id: int) -> int:
        return self._generations.get(account_id, 0)

    def run(self) -> None:
        logger.info("listener supervisor %s started", self.owner)
        renew_every = self.ttl_ms / 3000
        next_scan = 0.0
        while not self.stop_event.is_set():
            try:
                self._renew_leases()
                if time.monotonic() >= next_scan:
                    self._scan()
                    next_scan = time.monotonic() + self.scan_seconds
            except (redis.RedisError, OperationalError, InterfaceError) as exc:
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
            elif not self.leases.renew(listener_id):
                logger.warning("lost the lease on listener %s; stopping it", listener_id)
                runner.stop()
                self.runners.pop(listener_id, None)

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
        for listener_id, runner in list(self.runners.items()):
            runner.join(timeout=5)
            try:
                domain.set_listener_state(listener_id, Listener.State.IDLE, owner="")
            except Exception:
                logger.info("could not mark listener %s idle", listener_id)
            self.leases.release(listener_id)
        self.runners.clear()
        self._redis.close()
        logger.info("listener supervisor %s stopped", self.owner)


def _ensure_listeners(account, provider):
    from telephony.control import ensure_listeners

    return ensure_listeners(account, provider)
