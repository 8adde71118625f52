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

Listeners are shared fairly across workers (``fair_share``): each supervisor beats in Redis (``workers``), and
every scan decides from the live workers and the lease holders whether this worker takes free listeners, takes
listeners other workers offer, or offers its surplus. A listener moves make-before-break (``leases``: offer,
take, the taker's socket connected, hand-off, then the old owner closes), and a supervisor told to stop offers
all its listeners and waits (``LISTENER_HANDOVER_SECONDS``, twice that for handovers under way, at most) for
other workers to take them over.

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

import collections
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
from telephony.sockets import workers
from telephony.sockets.fair_share import decide
from telephony.sockets.keepalives import KeepAlives, SessionChecks
from telephony.sockets.leases import OFFERS_KEY, LeaseStore, lease_owners, offers
from telephony.sockets.runner import ListenerRunner

logger = logging.getLogger(__name__)

#: Logins (and socket opens) one worker runs at once for listeners it starts holding (a worker starting, a
#: listener free, a reconnect): at a PBX restart every worker's sockets log in again at once.
CONNECT_CONCURRENCY = 8
#: Handovers a worker has under way (taken, its socket not the owner's yet), in ``LISTENER_HANDOVER_CONCURRENCY``
#: (the logins it runs at once for them): enough queued behind the running ones that a slot freed is used at
#: the next tick, few enough that none waits ``LISTENER_HANDOVER_SECONDS`` for a slot and is given up.
TAKING_PER_HANDOVER_SLOT = 2
#: How often handovers under way are moved on, and offers looked at, between scans, while the worker has any under
#: way or is off its share (``_busy``); otherwise it waits for the next renewal or scan, or a change among the
#: live workers (``workers.changes_channel``), whichever comes first.
HANDOVER_TICK_SECONDS = 0.25
#: How often a supervisor waiting for a change looks at its stop event (a wake without any Redis round trip).
STOP_POLL_SECONDS = 0.5


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
        self.max_held = settings.LISTENER_MAX_PER_WORKER  # 0: no cap but the fair share's
        self.slack = settings.LISTENER_SHARE_SLACK
        self.heartbeat_ttl_ms = workers.heartbeat_ttl_ms()
        self.handover_seconds = settings.LISTENER_HANDOVER_SECONDS
        self.handover_concurrency = settings.LISTENER_HANDOVER_CONCURRENCY
        self.stop_event = threading.Event()
        #: Every runner of this worker: the listeners it holds, and those it is taking over (``taking``).
        self.runners: dict[int, ListenerRunner] = {}
        #: Listener -> the worker handing it over to us (our socket opens beside theirs; the lease is theirs).
        self.taking: dict[int, str] = {}
        #: Listener we hold -> when we offered it to the others.
        self.offered: dict[int, float] = {}
        #: What the last scan found: listener id -> (account, listener, spec), the listeners to share.
        self._candidates: dict[int, tuple[PbxAccount, Listener, ListenerSpec]] = {}
        self._leaving = False
        #: Runners handed over, storing what already reached their sockets before they close (``retire``).
        self._retiring: list[ListenerRunner] = []
        self._generations: dict[int, int] = {}
        self._redis = redis_client()
        self._changes: redis.client.PubSub | None = None  # workers.changes_channel, subscribed by ``_changed``
        self.leases = LeaseStore(self._redis, self.owner, self.ttl_ms)
        self.keepalives = KeepAlives(self.keepalive_seconds)
        self.session_checks = SessionChecks(settings.ISTRA_SESSION_CHECK_SECONDS)
        self._connects = threading.BoundedSemaphore(CONNECT_CONCURRENCY)
        # Handovers log in on slots of their own: a join moving hundreds of listeners must not queue behind (or
        # hold up) the reconnects, and its pace is the PBX's to allow (LISTENER_HANDOVER_CONCURRENCY).
        self._handover_connects = threading.BoundedSemaphore(self.handover_concurrency)
        #: The live workers at the last look: a change (a worker joined or left) rebalances at once.
        self._live: list[str] = []
        #: What this worker did about its share since the last scan's log line (``_log_moves``).
        self._moves: collections.Counter = collections.Counter()
        self._last_decision = None
        # Redis restarted empty holds no leases: a listener looks free though its owner still reads it.
        # Until one TTL after the last Redis error seen here, only leases already held are taken (back).
        self._take_new_after = 0.0

    def restart_generation(self, account_id: int) -> int:
        return self._generations.get(account_id, 0)

    @contextlib.contextmanager
    def connect_slot(self, stop_event: threading.Event, handover: bool = False):
        """One of ``CONNECT_CONCURRENCY`` places to log in and open a socket (``handover``: one of
        ``LISTENER_HANDOVER_CONCURRENCY``, a taker's); False if stopped while waiting."""
        slots = self._handover_connects if handover else self._connects
        while not slots.acquire(timeout=0.5):
            if stop_event.is_set():
                yield False
                return
        try:
            yield True
        finally:
            slots.release()

    def run(self) -> None:
        logger.info("listener supervisor %s started", self.owner)
        self.keepalives.start()
        self.session_checks.start()
        renew_every = self.ttl_ms / 3000
        next_renew = next_scan = 0.0
        self._changed(0)  # subscribed before the first scan reads the live workers: no join falls between
        while not self.stop_event.is_set():
            try:
                if time.monotonic() >= next_renew:
                    workers.beat(self._redis, self.owner)  # before the renewals: it expires before the leases
                    self._renew_leases()
                    next_renew = time.monotonic() + renew_every
                if time.monotonic() >= next_scan:
                    self._scan()
                    self._log_moves()
                    next_scan = time.monotonic() + self.scan_seconds
                self._move_handovers()
            except redis.RedisError as exc:
                self._take_new_after = time.monotonic() + self.ttl_ms / 1000
                logger.warning("supervisor cycle failed (%s); retrying", exc)
            except (OperationalError, InterfaceError) as exc:
                logger.warning("supervisor cycle failed (%s); retrying", exc)
                close_old_connections()
            except Exception:
                logger.exception("supervisor cycle crashed; retrying")
            # At its share with nothing under way, a tick would only find the live workers unchanged (each tick
            # was a Redis round trip, ~6 ms of CPU a second in all); a change among them is published instead.
            soon = time.monotonic() + HANDOVER_TICK_SECONDS
            self._wait(soon if self._busy() else max(soon, min(next_renew, next_scan)))
        try:
            self._hand_over_all()
        except Exception:  # Redis or the database gone at shutdown: close what is held, as before
            logger.exception("handing the listeners over at shutdown failed")
        self._stop_all()

    def stop(self, timeout: float | None = None) -> None:
        """Hand the listeners over to other live workers (``LISTENER_HANDOVER_SECONDS``, twice that for handovers
        under way, at most), then stop."""
        self.stop_event.set()
        self.join(2 * self.handover_seconds + 10 if timeout is None else timeout)

    def _renew_leases(self) -> None:
        for listener_id, runner in list(self.runners.items()):
            if not runner.is_alive():
                self._forget(listener_id)
        held = [listener_id for listener_id in self.runners if listener_id not in self.taking]
        renewed = self.leases.renew_many(held)
        for listener_id, still_held in renewed.items():
            if not still_held:
                logger.warning("lost the lease on listener %s; stopping it", listener_id)
                self.runners.pop(listener_id).stop()
                self.offered.pop(listener_id, None)
        if self.offered:  # untaken offers expire with the lease TTL unless renewed (a taken one is refused)
            self.leases.offer_many(list(self.offered))

    def _scan(self) -> None:
        close_old_connections()
        accounts = [a for a in PbxAccount.objects.filter(enabled=True) if provider_class(a.kind).holds_sockets]
        self._refresh_generations([a.pk for a in accounts])
        wanted: set[int] = set()
        candidates = {}
        for account in accounts:
            provider = provider_for(account)
            for listener, spec in _ensure_listeners(account, provider):
                wanted.add(listener.pk)
                if listener.state != Listener.State.FAILED or listener.pk in self.runners:
                    candidates[listener.pk] = (account, listener, spec)
        self._candidates = candidates
        for listener_id in set(self.runners) - wanted:
            logger.info("listener %s no longer needed; stopping it", listener_id)
            self.runners[listener_id].stop()
            self.taking.pop(listener_id, None)
            self.offered.pop(listener_id, None)
            self._forget(listener_id)
        self._rebalance(offer=True)

    def _rebalance(self, offer: bool) -> None:
        """Move towards this worker's fair share: free listeners first, then others' offers; offer a surplus."""
        if self._leaving or time.monotonic() < self._take_new_after or not self._candidates:
            return
        ids = sorted(self._candidates)
        holders = lease_owners(self._redis, ids)
        states = offers(self._redis, ids)
        moving = {i: state.split("|")[1] for i, state in states.items() if "|" in state}
        ready = [i for i, state in states.items() if state.endswith("|ready")]
        untaken = {i: state for i, state in states.items() if "|" not in state}
        live = self._live = workers.live_workers(self._redis, self.heartbeat_ttl_ms)
        decision = decide(ids, live, holders, self.owner, slack=self.slack, moving=moving, offered=untaken,
                          max_held=self.max_held, max_taking=TAKING_PER_HANDOVER_SLOT * self.handover_concurrency,
                          ready=ready)
        self._last_decision = decision
        acquired = 0
        for listener_id in decision.free:
            if acquired >= decision.acquire:
                break
            if listener_id not in self.runners and self.leases.acquire(listener_id):
                self._start_runner(*self._candidates[listener_id])
                acquired += 1
        self._moves["acquired"] += acquired
        to_take = decision.take_offers + (decision.acquire - acquired)
        if decision.take_room is not None:
            to_take = min(to_take, decision.take_room)
        chosen: dict[int, str] = {}
        for listener_id in decision.take_order:
            if len(chosen) >= to_take:
                break
            owner = untaken[listener_id]
            if owner == self.owner or listener_id in self.runners or holders.get(listener_id) != owner:
                continue
            chosen[listener_id] = owner
        # In one round trip (a Redis call each was an owner's and a taker's CPU a move, issue 19); one lost to
        # another taker is made up for at a next tick.
        for listener_id, took in self.leases.take_many(list(chosen.items())).items():
            if took:
                logger.debug("taking listener %s over from %s", listener_id, chosen[listener_id])
                self.taking[listener_id] = chosen[listener_id]
                self._start_runner(*self._candidates[listener_id], taking_over=True)
                self._moves["taken"] += 1
            else:
                self._moves["take_lost"] += 1  # another taker was first
        if offer:
            mine_untaken = sorted(i for i, owner in untaken.items() if owner == self.owner and i in self.offered)
            for listener_id in mine_untaken[decision.on_offer:]:  # nobody is short of them any more
                if self.leases.withdraw(listener_id):
                    self.offered.pop(listener_id, None)
                    self._moves["withdrawn"] += 1
        if offer and decision.offer:
            done = self.leases.offer_many([i for i in decision.offer if i in self.runners and i not in self.taking])
            offered = [listener_id for listener_id, ok in done.items() if ok]
            for listener_id in offered:
                self.offered[listener_id] = time.monotonic()
            self._moves["offered"] += len(offered)

    def _move_handovers(self) -> None:
        """Between scans: finish the handovers under way, on either side, and take offers if short; a worker
        joining or leaving rebalances (offers included) at once rather than at the next scan."""
        if self.taking:
            self._claim_taken()
        if self.offered:
            self._hand_off_ready()
        if self._leaving:
            return
        if workers.live_workers(self._redis, self.heartbeat_ttl_ms) != self._live:
            self._rebalance(offer=True)
        elif self._short() and self._redis.zcard(OFFERS_KEY):
            self._rebalance(offer=False)

    def _busy(self) -> bool:
        """Handovers or offers under way, leaving, or off its share at the last decision: moved on every tick."""
        if self.taking or self.offered or self._leaving:
            return True
        if not self._candidates:
            return False  # nothing to share
        decision = self._last_decision
        return decision is None or len(self.runners) < decision.target or decision.on_offer > 0

    def _wait(self, until: float) -> None:
        """Until ``until`` (monotonic), the stop event, or a change among the live workers, whichever first."""
        while not self.stop_event.is_set():
            left = until - time.monotonic()
            if left <= 0 or self._changed(min(left, STOP_POLL_SECONDS)):
                return

    def _changed(self, timeout: float) -> bool:
        """Whether a change among the live workers was published within ``timeout`` seconds (read them all)."""
        try:
            if self._changes is None:
                self._changes = workers.watch(self._redis)
                return True  # (again, after Redis was gone: a change may have been missed meanwhile)
            connection = self._changes.connection
            # Poll the subscription's socket alone: an idle wake costs no redis-py call.
            if not connection.can_read(timeout=timeout):
                return False
            changed = False
            for _ in range(100):  # everything that came (None: the subscription's own confirmation); bounded
                changed = self._changes.get_message(timeout=0) is not None or changed
                if not connection.can_read(timeout=0):
                    break
            return changed
        except redis.RedisError as exc:
            # Redis gone: subscribe again on the next wait; meanwhile the ticks and scans look at the live
            # workers themselves, as they do a change missed while unsubscribed.
            logger.debug("waiting for worker changes failed (%s)", exc)
            self._close_changes()
            self.stop_event.wait(timeout)
            return False

    def _close_changes(self) -> None:
        changes, self._changes = self._changes, None
        if changes is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                changes.close()

    def _short(self) -> bool:
        """Under its target at the last decision (taking included): only then are offers worth a look
        between scans (a worker joining or leaving is looked at every tick)."""
        decision = self._last_decision
        return decision is None or len(self.runners) < decision.target

    def _log_moves(self) -> None:
        """One line a scan while listeners move: what this worker did about its share since the last one."""
        decision = self._last_decision
        if not self._moves or decision is None:
            return
        held = sum(1 for listener_id in self.runners if listener_id not in self.taking)
        done = ", ".join(f"{what} {n}" for what, n in sorted(self._moves.items()))
        logger.info("share: holds %d (target %d, cap %d), %d taking, %d on offer, %d live workers; since the last "
                    "scan: %s", held, decision.target, decision.cap, len(self.taking), len(self.offered),
                    len(self._live), done)
        self._moves.clear()

    def _claim_taken(self) -> None:
        """Taker's side: renew each handover, say when our socket is up, and note when the lease is ours."""
        claims, given_up = [], []
        for listener_id, owner in list(self.taking.items()):
            runner = self.runners.get(listener_id)
            if runner is None or not runner.is_alive():
                self.taking.pop(listener_id)
                self.runners.pop(listener_id, None)  # its state expires: the owner keeps the listener
                continue
            ready = runner.connected.is_set()
            if not ready and time.monotonic() - runner.started_at > self.handover_seconds:
                given_up.append(listener_id)  # our socket never came up (a login refused, a PBX down)
            else:
                claims.append((listener_id, owner, ready))
        for listener_id in given_up:  # the owner keeps it (it never closed), and may offer it again at once
            self.leases.call_off(listener_id, self.taking[listener_id])
        self._moves["given_up"] += len(given_up)
        results = {**self.leases.claim_many(claims), **{listener_id: 0 for listener_id in given_up}}
        for listener_id, claimed in results.items():
            owner = self.taking[listener_id]
            if claimed == 2:
                self.taking.pop(listener_id)
                self._moves["claimed"] += 1
                logger.debug("took listener %s over from %s", listener_id, owner)
            elif claimed == 0:
                self._moves["called_off"] += 1
                logger.info("handover of listener %s from %s called off; closing our socket", listener_id, owner)
                self.taking.pop(listener_id)
                self.runners.pop(listener_id).stop(keep_listener=True)  # the owner still listens under its name

    def _hand_off_ready(self) -> int:
        """Owner's side: give each listener whose taker's socket is up to it, then close ours. Returns how many
        of ours are taken and not handed off yet."""
        ids = list(self.offered)
        states = offers(self._redis, ids)
        now = time.monotonic()
        self._retiring = [r for r in self._retiring if r.is_alive()]
        in_flight = handed = 0
        stale = []
        ready: dict[int, str] = {}  # ours, the taker's socket up: listener -> taker
        for listener_id in ids:
            state = states.get(listener_id)
            if listener_id not in self.runners:
                self.leases.withdraw(listener_id)
                self.offered.pop(listener_id)
            elif state is None:  # its taker died or called it off: we never closed, we keep it
                self.offered.pop(listener_id)
            elif state == self.owner:  # nobody took it yet (``_renew_leases`` renews the offer)
                if now - self.offered[listener_id] > self.handover_seconds and not self._leaving:
                    stale.append(listener_id)
            elif state.endswith("|ready"):
                owner, taker, _ = state.split("|")
                if owner == self.owner:
                    ready[listener_id] = taker
            else:
                in_flight += 1  # taken, the taker's socket not up yet
        for listener_id, handed_off in self.leases.hand_off_many(list(ready.items())).items():  # one round trip
            if handed_off:
                self.offered.pop(listener_id)
                retiring = self.runners.pop(listener_id)
                retiring.retire()  # closes once what reached it is stored
                self._retiring.append(retiring)
                self._moves["handed_off"] += 1
                handed += 1
                logger.debug("handed listener %s over to %s", listener_id, ready[listener_id])
        # Offers untaken for LISTENER_HANDOVER_SECONDS are withdrawn, unless takers are still taking ours: a join
        # moving 1,000 listeners takes longer than that, and withdrawing the rest only to offer them again at the
        # next scan left the taker idle meanwhile. Offers nobody is short of are withdrawn by the scans.
        if stale and not in_flight and not handed:
            for listener_id in stale:
                # Only if the withdrawal holds: taken meanwhile, it is handed off at a next tick (forgotten here,
                # the taker's socket would wait ready, renewing, for a hand-off that never comes).
                if self.leases.withdraw(listener_id):
                    self.offered.pop(listener_id)
                    self._moves["withdrawn_untaken"] += 1
        return in_flight

    def _hand_over_all(self) -> None:
        """Stopping cleanly: leave the live workers, offer every listener held, and wait (bounded) for takers."""
        self._leaving = True
        workers.leave(self._redis, self.owner)
        for listener_id in list(self.taking):  # half-taken ones: their owners keep them, listening under the name
            self.taking.pop(listener_id)
            self.runners.pop(listener_id).stop(keep_listener=True)
        if not self.runners or not self._others_live():
            return
        logger.info("offering %d listeners to the other workers before stopping", len(self.runners))
        # Takers get LISTENER_HANDOVER_SECONDS; handovers already under way then (a taker logging in, on a
        # worker that took hundreds at once) as long again to finish, rather than be cut and left unheld.
        started, renew_at, in_flight = time.monotonic(), 0.0, 0
        while self.runners:
            elapsed = time.monotonic() - started
            if elapsed >= 2 * self.handover_seconds or (elapsed >= self.handover_seconds and not in_flight):
                break
            if time.monotonic() >= renew_at:
                self._renew_leases()
                renew_at = time.monotonic() + self.ttl_ms / 3000
                if not self._others_live():
                    break  # they are stopping too: nobody will take the rest
            fresh = [listener_id for listener_id in self.runners if listener_id not in self.offered]
            for listener_id, done in self.leases.offer_many(fresh).items():
                if done:
                    self.offered[listener_id] = time.monotonic()  # again, if a taker died half-way
            in_flight = self._hand_off_ready()
            time.sleep(HANDOVER_TICK_SECONDS)
        for listener_id in list(self.offered):
            self.leases.withdraw(listener_id)
        logger.info("%d listeners left to close at shutdown", len(self.runners))

    def _others_live(self) -> bool:
        return any(worker != self.owner for worker in workers.live_workers(self._redis, self.heartbeat_ttl_ms))

    def _refresh_generations(self, account_ids: list[int]) -> None:
        if not account_ids:
            return
        values = self._redis.mget([restart_key(a) for a in account_ids])
        self._generations = {a: int(v or 0) for a, v in zip(account_ids, values)}
        for runner in list(self.runners.values()):
            opened_under = runner.generation
            if opened_under is not None and opened_under != self.restart_generation(runner.account.pk):
                runner.interrupt("restart requested")

    def _start_runner(self, account: PbxAccount, listener: Listener, spec: ListenerSpec,
                      taking_over: bool = False) -> None:
        runner = ListenerRunner(self, account, listener, spec, taking_over=taking_over)
        self.runners[listener.pk] = runner
        runner.start()

    def _forget(self, listener_id: int) -> None:
        self.runners.pop(listener_id, None)
        self.offered.pop(listener_id, None)
        if self.taking.pop(listener_id, None) is None:  # a half-taken listener's lease is its owner's
            self.leases.release(listener_id)

    def _stop_all(self) -> None:
        for runner in self.runners.values():
            runner.stop()
        self.keepalives.stop()
        self.session_checks.stop()
        for listener_id, runner in list(self.runners.items()):
            runner.join(timeout=5)
            if listener_id in self.taking:
                continue  # half-taken: its owner still holds it
            try:
                status.set_listener_state(listener_id, Listener.State.IDLE, owner="")
            except Exception:
                logger.info("could not mark listener %s idle", listener_id)
            self.leases.release(listener_id)
        self.runners.clear()
        self.taking.clear()
        drained_by = time.monotonic() + 5  # handed over at shutdown: let them store what reached them
        for retiring in self._retiring:
            retiring.join(max(0.0, drained_by - time.monotonic()))
        with contextlib.suppress(redis.RedisError):
            workers.leave(self._redis, self.owner)
        self._close_changes()
        self._redis.close()
        connection.close()  # this thread's, from scanning: it would outlive the thread
        logger.info("listener supervisor %s stopped", self.owner)


def _ensure_listeners(account, provider):
    from telephony.control import ensure_listeners

    return ensure_listeners(account, provider)
