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

The parts, in ``telephony.sockets``: this module (the ``Supervisor``, restart requests), ``runner``
(``ListenerRunner``, the reconnect rules), ``keepalives`` (``KeepAlives``, ``SessionChecks``),
``database`` (the database threads the runners hand their bursts to) and ``leases`` (who holds which
listener). What the admin shows of listeners and accounts is written by ``telephony.status``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from telephony import status
from telephony.models import Listener, PbxAccount
from telephony.providers import provider_class, provider_for
from telephony.providers.base import ListenerSpec
from telephony.sockets.keepalives import KeepAlives, SessionChecks
from telephony.sockets.leases import LeaseStore
from telephony.sockets.runner import ListenerRunner

logger = logging.getLogger(__name__)

#: Logins (and socket opens) one worker runs at once.
CONNECT_CONCURRENCY = 8


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
