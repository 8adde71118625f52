"""One socket's runner: logs in, opens the socket, feeds every burst of frames to the domain, and
reconnects, at once after a healthy socket, after a growing jittered delay after failures in a row."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import TYPE_CHECKING

from django.db import InterfaceError, OperationalError, connection

from ctihub.lib import card_trace
from ctihub.lib.http_client import shared_client
from telephony import domain, status
from telephony.models import Listener, PbxAccount
from telephony.providers import provider_for
from telephony.providers.base import (
    EventStream,
    ListenerSpec,
    ProviderError,
    StreamClosed,
    database_work_on,
    trust_store,
)
from telephony.sockets.database import GroupCommit, db_workers
from telephony.updates import FrameRejected

if TYPE_CHECKING:  # the supervisor imports the runner
    from telephony.sockets.supervisor import Supervisor

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
#: How long an idle runner sleeps in recv; stop, restart and keep-alive failures wake it sooner.
IDLE_RECV_SECONDS = 60.0
#: A burst is the frame that woke the runner plus those already waiting, within these bounds.
BURST_MAX_FRAMES = 200
BURST_MAX_SECONDS = 0.02
#: A runner handed over (``retire``) is stopped once it waits in recv with nothing pending, looked at this often,
#: or after ``RETIRE_CAP_SECONDS`` whatever it is doing.
RETIRE_CHECK_SECONDS = 0.1
RETIRE_CAP_SECONDS = 30.0


_connected_notes: tuple[int, GroupCommit] | None = None


def connected_notes() -> GroupCommit:
    """The process's group commit of "listener connected" (a forked child gets its own)."""
    global _connected_notes
    if _connected_notes is None or _connected_notes[0] != os.getpid():
        _connected_notes = (os.getpid(), GroupCommit(status.set_listeners_connected))
    return _connected_notes[1]


# One transaction for the bursts every socket of the process has waiting: at a few hundred frames a second the
# sockets' bursts were single frames, each its own transaction (a BEGIN, the lock, the write, a COMMIT) on a
# database thread of its own, and when the rate stepped up a dozen threads opened connections at once and
# fought for the cores. Grouped, a burst that comes while another is written waits for that write and goes in
# the next with every other one waiting: none is delayed when alone.
TOUCH_FAILED = "touch failed"

_frame_bursts: tuple[int, GroupCommit] | None = None


def frame_bursts() -> GroupCommit:
    """The process's group commit of frame bursts (a forked child gets its own)."""
    global _frame_bursts
    if _frame_bursts is None or _frame_bursts[0] != os.getpid():
        _frame_bursts = (os.getpid(), GroupCommit(_store_bursts))
    return _frame_bursts[1]


def _store_bursts(bursts: list[tuple]) -> list:
    """Each burst's outcome: stored (None), stored but its listener's "last event" not noted (``TOUCH_FAILED``), or
    the exception that kept it from being stored. (updates, received, listener id, account id) a burst."""
    try:
        _apply([update for burst in bursts for update in burst[0]], min(burst[1] for burst in bursts))
        outcomes: list = [None] * len(bursts)
    except (OperationalError, InterfaceError):
        raise  # every burst waits the outage out and comes again (the database thread closes the connection)
    except Exception:
        if len(bursts) == 1:
            raise
        outcomes = [_store_alone(burst) for burst in bursts]  # one burst's bad frame must not cost the others theirs
    for n, (_updates, _received, listener_id, account_id) in enumerate(bursts):
        if outcomes[n] is None:
            try:
                status.touch_listener(listener_id, account_id)
            except (OperationalError, InterfaceError):
                connection.close()
                outcomes[n] = TOUCH_FAILED
    return outcomes


def _store_alone(burst: tuple):
    try:
        _apply(burst[0], burst[1])
    except (OperationalError, InterfaceError) as exc:
        connection.close()  # the next one reconnects
        return exc
    except Exception as exc:  # noqa: BLE001 - this burst's own failure, raised in its own runner
        return exc
    return None


def _apply(updates: list, received: float) -> None:
    with card_trace.frame_received(received):  # the benchmark's stage times (off in production)
        domain.apply_call_updates(updates, received=received)


def backoff_delay(seconds_down: float, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """How long to wait before the next try, after failures in a row for ``seconds_down`` seconds.

    The bound grows with the outage (``DOWN_FRACTION`` of it, between ``base`` and ``cap``), so a PBX
    back after 10 s is tried again within 2.5 s, and one down for minutes once a ``cap``. Jittered in
    [bound/2, bound]: a PBX restart is not a stampede, and no try comes at once after a failure.
    """
    bound = min(cap, max(base, DOWN_FRACTION * max(seconds_down, 0.0)))
    return random.uniform(bound / 2, bound)


class ListenerRunner(threading.Thread):
    """One socket, reconnecting until told to stop."""

    def __init__(self, supervisor: Supervisor, account: PbxAccount, listener: Listener, spec: ListenerSpec,
                 taking_over: bool = False):
        super().__init__(name=f"listener-{listener.pk}", daemon=True)
        #: Set while the socket is connected and the frames it found at connect are stored: what a handover
        #: waits for before the listener's previous owner closes its own socket.
        self.connected = threading.Event()
        #: Opening a socket beside another worker's (a handover): the listener is not "connecting" meanwhile.
        self.taking_over = taking_over
        self.started_at = time.monotonic()
        self._waiting = False  # in recv, all frames read stored: what ``retire`` waits for
        self._retire_by = 0.0
        #: Close without deleting the PBX listener: another worker's socket listens under the same name.
        self.keep_listener = False
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

    def stop(self, *, keep_listener: bool = False) -> None:
        """Stop for good. ``keep_listener``: another worker's socket uses the listener (a handover called off
        on the taker's side): close ours without deleting the listener at the PBX."""
        if keep_listener:
            self.keep_listener = True
        self.stop_event.set()
        self.interrupt("listener stopped")

    def retire(self) -> None:
        """Handed over to another worker: store the frames that already reached this socket, then stop.

        The new owner's socket has been up since before the hand-off, so it has every frame sent since; but
        a frame sent before it connected may still sit in this socket's buffer behind a slow burst, and an
        interrupt would drop it. So the runner is stopped only once it waits in recv with nothing pending.
        """
        self.keep_listener = True  # the new owner listens under the same name: see ``close_stream``
        self._retire_by = time.monotonic() + RETIRE_CAP_SECONDS
        self._retire_check()

    def _retire_check(self) -> None:
        if self.stop_event.is_set() or not self.is_alive():
            return
        with self._stream_lock:
            stream = self._stream
        idle = stream is None or (self._waiting and not stream.pending())
        if idle or time.monotonic() >= self._retire_by:
            self.stop()
            return
        timer = threading.Timer(RETIRE_CHECK_SECONDS, self._retire_check)
        timer.daemon = True
        timer.start()

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
        # Every socket of the account logs in and binds over the process's one client for it: a client (and a
        # TCP connection) per socket was a quarter of a handover's CPU on the taker's side (issue 19).
        provider = provider_for(self.account, http=shared_client(
            f"{self.account.kind}.sockets", verify=trust_store(self.account.ca_bundle)))
        stream = None
        generation = self.generation = self.supervisor.restart_generation(self.account.pk)
        handover = self.taking_over
        if not handover:
            self._retry_db(lambda: status.set_listener_state(
                self.listener_id, Listener.State.CONNECTING, owner=self.supervisor.owner))
        self.taking_over = False  # a reconnect after the handover is an ordinary one
        try:
            with self.supervisor.connect_slot(self.stop_event, handover=handover) as may_connect:
                if not may_connect:
                    return
                # A provider may read the database to log in (Istra: a login refused lately is not sent again)
                # and to catch up (myRCC: the calls that ended while we were away). Only CONNECT_CONCURRENCY
                # threads (LISTENER_HANDOVER_CONCURRENCY more taking listeners over) get here at once, and each
                # gives its connection back, failed or not.
                try:
                    with database_work_on(db_workers().run):  # the login's read: on a kept connection
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
            self._note_connected()
            connected_at = time.monotonic()
            logger.info("listener connected", extra=self._log_extra)
            self._apply_burst(provider, initial_frames, opened)
            self.connected.set()
            self._pump(provider, stream, generation)
        finally:
            self.connected.clear()
            if connected_at is not None:  # measured before the cleanup, which may wait on a slow PBX
                self._up_seconds = time.monotonic() - connected_at
            if stream is not None:
                self.supervisor.keepalives.remove(stream)
                self.supervisor.session_checks.remove(stream)
            with self._stream_lock:
                self._stream = None
            self.generation = None
            try:
                provider.close_stream(self.spec, stream, keep_listener=self.keep_listener)
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
                self._waiting = True
                try:
                    text = stream.recv(IDLE_RECV_SECONDS)
                finally:
                    self._waiting = False
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
        # write fails, it alone is retried, the burst is not applied again. Stored with the bursts of the
        # process's other sockets that are waiting at the same time (``frame_bursts``).
        burst = (updates, received, self.listener_id, self.account.pk)
        if self._retry(lambda: frame_bursts().add(burst)) == TOUCH_FAILED:
            self._retry_db(lambda: status.touch_listener(self.listener_id, self.account.pk))

    def _note_connected(self) -> None:
        """The listener and its account connected, in one statement with the other sockets connecting now."""
        self._retry(lambda: connected_notes().add((self.listener_id, self.account.pk, self.supervisor.owner)))

    def _retry_db(self, operation):
        """``operation()`` on a database thread, a database outage waited out."""
        return self._retry(lambda: db_workers().run(operation))

    def _retry(self, call):
        """``call()`` again every ``DB_RETRY_SECONDS`` while the database is unavailable (until the runner stops).
        ``call`` takes its own way to the database threads (``db_workers`` or a group commit)."""
        while True:
            try:
                return call()
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
