"""The one base class every PBX provider extends, and the one error type they raise.

A provider knows how to talk to one PBX API for one ``PbxAccount``: REST calls
(test the login, fetch terminals, place a call, act on a call) and, where the
PBX pushes events, the sockets (which listeners the account needs, how to open
one, how to read its frames into ``CallUpdate`` objects). Providers override
only what differs; ``telephony.domain`` and ``telephony.sockets.supervisor`` do the rest.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import websocket

from ctihub.lib import trust_store as trust_stores
from telephony.updates import CallUpdate

#: Where a provider's own database reads run (``run_database``): in the calling thread unless the caller says.
_database_runner: contextvars.ContextVar = contextvars.ContextVar("provider_database_runner", default=None)


def run_database(operation):
    """``operation()``, on the threads the caller named (``database_work_on``), else here.

    A listener's runner thread has no database connection of its own to keep (a worker runs thousands):
    a read it made while logging in (Istra's refused-login check) opened and closed a PostgreSQL connection
    each time, a sixth of a handover's CPU on the taker (issue 19). The supervisor's database threads keep
    theirs.
    """
    runner = _database_runner.get()
    return operation() if runner is None else runner(operation)


@contextlib.contextmanager
def database_work_on(runner):
    """Within the block, ``run_database(operation)`` is ``runner(operation)`` in this thread."""
    token = _database_runner.set(runner)
    try:
        yield
    finally:
        _database_runner.reset(token)


class ProviderError(Exception):
    """Anything that went wrong talking to a PBX, said so an admin understands it.

    ``permanent`` means retrying cannot help (bad credentials, a terminal the PBX
    does not know): the supervisor stops and shows it in the admin. Otherwise the
    caller retries with backoff.
    """

    def __init__(self, message: str, *, permanent: bool = False, code: str = "", status: int | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.code = code
        self.status = status


class SessionExpired(ProviderError):
    """The PBX no longer knows our session: log in again."""


class ActionRefused(ProviderError):
    """The call's current state does not allow this action (refused before asking the PBX)."""

    def __init__(self, message: str, **kwargs):
        kwargs.setdefault("permanent", True)
        super().__init__(message, **kwargs)


class StateConflict(ProviderError):
    """The PBX's state moved on since we read it (Telepo stateToken): refresh, never retry blindly."""


class NotSupported(ProviderError):
    """This PBX API cannot do that at all."""

    def __init__(self, message: str, **kwargs):
        kwargs.setdefault("permanent", True)
        super().__init__(message, **kwargs)


def trust_store(ca_bundle: str) -> bool | str:
    """What to verify the PBX's certificate against (``ctihub.lib.trust_store``): the system CAs plus the
    account's PEM; a bundle that is not PEM is the admin's to fix (a permanent ``ProviderError``)."""
    try:
        return trust_stores.trust_store(ca_bundle)
    except trust_stores.NotPem as exc:
        raise ProviderError(str(exc), permanent=True) from None


class StreamClosed(Exception):
    """The event socket closed (or broke); the supervisor reconnects."""


@dataclass(frozen=True)
class TerminalInfo:
    """A terminal or extension as the PBX lists it."""

    pbx_id: str
    extension: str = ""
    label: str = ""
    device_model: str = ""
    department: str = ""
    photo_url: str = ""
    pstn_numbers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListenerSpec:
    """One socket an account needs: per terminal (myCrm) or per account (terminal_pbx_id None)."""

    name: str
    terminal_pbx_id: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


class EventStream:
    """An open event socket: frames in, keep-alives out.

    One thread reads (``recv``); another may send keep-alives and ``interrupt`` it at the same time.
    """

    #: Frames to apply before reading the socket, oldest first (myRCC's list of
    #: the call lines that exist when the listener is bound).
    initial_frames: tuple[str, ...] = ()
    #: A cheap authenticated request on the session the socket belongs to, without logging in again;
    #: raises SessionExpired when the PBX has forgotten that session. The supervisor's ``SessionChecks``
    #: call it every ISTRA_SESSION_CHECK_SECONDS: it keeps the session active (Istra expires a session
    #: after a delay without requests, and websocket pings are not requests) and finds a session expired
    #: while its socket stays open, which otherwise goes unnoticed. None: the PBX has no such session.
    session_check: Callable[[], None] | None = None

    def recv(self, timeout: float) -> str | None:
        """The next frame's text, or None if none came within ``timeout``; StreamClosed when it ends."""
        raise NotImplementedError

    def pending(self) -> bool:
        """True when a frame has (at least partly) arrived, so ``recv`` returns without waiting on the PBX."""
        return False

    def keepalive(self) -> None:
        raise NotImplementedError

    def quiet_seconds(self) -> float:
        """How long the PBX has sent nothing at all (frames, answers to keep-alives); 0 if it cannot tell."""
        return 0.0

    def interrupt(self, reason: str) -> None:
        """Make a ``recv`` blocked in another thread raise StreamClosed(reason) now; ``close`` still works after."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class WebSocketStream(EventStream):
    """A websocket-client connection; keep-alive is a websocket ping, after the provider's own frame if it has one."""

    def __init__(self, ws: websocket.WebSocket, keepalive_frame: dict | None = None):
        self.ws = ws
        self.keepalive_frame = keepalive_frame
        self._interrupted: str | None = None
        self.last_heard = time.monotonic()

    @classmethod
    def connect(cls, url: str, *, headers: list[str], timeout: float, sslopt: dict | None = None,
                keepalive_frame: dict | None = None) -> WebSocketStream:
        try:
            # UTF-8 is checked by ``recv``'s strict decode, in C: websocket-client's own check walks each
            # frame byte by byte in Python, a third of a millisecond for a myCrm frame.
            ws = websocket.create_connection(url, header=headers, timeout=timeout, sslopt=sslopt or {},
                                             enable_multithread=True, skip_utf8_validation=True)
        except websocket.WebSocketBadStatusException as exc:
            message = f"websocket {url} refused: HTTP {exc.status_code}"
            if exc.status_code in (401, 403):
                raise SessionExpired(message, status=exc.status_code) from exc
            raise ProviderError(message, status=exc.status_code) from exc
        except (OSError, websocket.WebSocketException) as exc:
            raise ProviderError(f"cannot open websocket {url}: {exc.__class__.__name__}: {exc}") from exc
        _read_in_chunks(ws)
        return cls(ws, keepalive_frame)

    def recv(self, timeout: float) -> str | None:
        if self._interrupted is not None:
            raise StreamClosed(self._interrupted)
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.ws.settimeout(max(deadline - time.monotonic(), 0.001))
                # Control frames too: a pong is how a quiet socket shows it is still alive.
                opcode, data = self.ws.recv_data(control_frame=True)
                self.last_heard = time.monotonic()
                if opcode not in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
                    break
                if time.monotonic() >= deadline:
                    return None
        except websocket.WebSocketTimeoutException:
            return None
        except (websocket.WebSocketConnectionClosedException, OSError, websocket.WebSocketException) as exc:
            raise StreamClosed(self._interrupted or str(exc) or exc.__class__.__name__) from exc
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise StreamClosed("closed by the PBX")
        if opcode == websocket.ABNF.OPCODE_TEXT and isinstance(data, bytes):
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as exc:  # a text frame that is not UTF-8 breaks the protocol: as websocket-client did
                raise StreamClosed(f"cannot decode a text frame: {exc}") from exc
        return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data

    def pending(self) -> bool:
        sock = self.ws.sock
        if sock is None:
            return False
        # websocket-client keeps the part of a frame it has read; TLS may hold decrypted bytes the kernel no longer shows.
        if self.ws.frame_buffer.recv_buffer or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return True
        return _ready(sock, select.POLLIN) or False

    def keepalive(self) -> None:
        sock = self.ws.sock
        try:
            # Sent from the keep-alive thread: a full send buffer (a PBX that stopped reading) must not block it.
            if sock is None or _ready(sock, select.POLLOUT) is False:
                raise StreamClosed("keep-alive cannot be sent: the PBX is not reading")
            if self.keepalive_frame is not None:
                self.ws.send(json.dumps(self.keepalive_frame))
            self.ws.ping()  # also after a provider's frame: its pong is the proof the path is alive
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            raise StreamClosed(f"keep-alive failed: {exc}") from exc

    def quiet_seconds(self) -> float:
        # Bytes waiting unread count as heard: the runner may be busy (a burst, a database outage).
        return 0.0 if self.pending() else time.monotonic() - self.last_heard

    def interrupt(self, reason: str) -> None:
        self._interrupted = reason
        sock = self.ws.sock
        if sock is None:
            return
        try:
            # Only the read side, and on the plain socket: SSLSocket.shutdown would drop TLS, and
            # the close frame still has to go out.
            socket.socket.shutdown(sock, socket.SHUT_RD)
        except OSError:  # already shut or closed: recv ends anyway
            pass

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:  # closing a broken socket may fail; it is gone either way
            pass


#: What one read of a socket asks for: a frame and whatever came behind it, in one system call.
READ_CHUNK = 16384


def _read_in_chunks(ws: websocket.WebSocket) -> None:
    """websocket-client reads a frame in three reads of exactly what it needs next (its header's 2 bytes, its
    length, its payload), each a poll and a recv on a socket with a timeout: six system calls and three passes
    through its Python for one myCrm frame. Its buffer keeps what a read brought beyond what was asked
    (``recv_strict``), so one read of up to ``READ_CHUNK`` bytes serves the frame and any behind it; ``pending``
    counts what waits in that buffer."""
    raw = ws.frame_buffer.recv
    ws.frame_buffer.recv = lambda bufsize: raw(max(bufsize, READ_CHUNK))


def _recv_line(sock) -> bytes:
    """One line of the handshake's answer, as websocket-client's ``recv_line`` (installed in its place below).

    Its own reads the answer's headers a byte per system call, each through its Python: ~200 for a PBX's
    101, a quarter of the CPU a worker spends taking a listener over (issue 19). On a plain socket a line is
    read in two: a peek at what has come, then exactly up to the line's end, so nothing after the headers (a
    first frame) is taken from the socket. A TLS socket cannot peek: byte by byte, as before.
    """
    if type(sock) is not socket.socket or sock.gettimeout() == 0:
        return _recv_line_byte_wise(sock)
    line = b""
    while True:
        try:
            peeked = sock.recv(READ_CHUNK, socket.MSG_PEEK)
            if not peeked:
                raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
            end = peeked.find(b"\n")
            got = sock.recv(len(peeked) if end < 0 else end + 1)  # bytes already there: returned at once
        except TimeoutError as exc:  # as websocket-client's own says a timeout
            raise websocket.WebSocketTimeoutException(str(exc) or "Connection timed out") from exc
        line += got
        if got.endswith(b"\n"):
            return line


_recv_line_byte_wise = websocket._socket.recv_line
websocket._http.recv_line = _recv_line  # what its handshake's read_headers calls


def _ready(sock, event: int) -> bool | None:
    """Whether ``sock`` is ready for ``event`` now (poll, not select: a worker's descriptors go past 1024);
    None if the socket is closed or broken, which the next read or write reports."""
    poller = select.poll()
    try:
        poller.register(sock, event)
        revents = poller.poll(0)
    except (OSError, ValueError):
        return None
    if revents and revents[0][1] & (select.POLLERR | select.POLLNVAL):
        return None
    return bool(revents and revents[0][1] & event)


class Provider:
    """Base class: one instance per account, used from one thread at a time."""

    kind: str = ""
    #: Actions this PBX can perform on a call (names as the console and retailCRM use them).
    actions: tuple[str, ...] = ()
    #: True when the PBX pushes call events over sockets that workers must hold.
    holds_sockets: bool = False

    def __init__(self, account, http=None):
        self.account = account
        self.http = http

    # --- REST -------------------------------------------------------------------------
    def test_connection(self) -> str:
        """Log in and say what we found ("3 terminals"), or raise ProviderError."""
        raise NotSupported(f"{self.kind} cannot test a connection")

    def fetch_terminals(self) -> list[TerminalInfo]:
        raise NotSupported(f"{self.kind} does not list terminals")

    def place_call(self, terminal_pbx_id: str, destination: str) -> dict:
        raise NotSupported(f"{self.kind} cannot place calls")

    def call_action(self, call, action: str, payload: dict) -> dict:
        raise NotSupported(f"{self.kind} cannot {action} a call")

    @classmethod
    def reach(cls, terminal) -> str:
        """The destination that rings ``terminal`` when a call is sent to it (a redirect, a transfer): its
        extension, the number a colleague dials. A PBX whose terminals are something else says so."""
        return terminal.extension

    # --- Sockets ------------------------------------------------------------------------
    def listener_specs(self, terminal_pbx_ids: list[str]) -> list[ListenerSpec]:
        return []

    def open_stream(self, spec: ListenerSpec) -> EventStream:
        raise NotSupported(f"{self.kind} has no event socket")

    def parse_frame(self, text: str, spec: ListenerSpec) -> list[CallUpdate]:
        """Turn one frame into updates; raise FrameRejected for a frame that makes no sense."""
        raise NotSupported(f"{self.kind} has no event socket")

    def close_stream(self, spec: ListenerSpec, stream: EventStream | None, *, keep_listener: bool = False) -> None:
        """Clean shutdown: delete the listener at the PBX and close the socket.

        ``keep_listener``: the listener lives on in another worker's socket (handed over, or a handover called
        off on the taker's side): close the socket without deleting anything the other one may use.
        """
        if stream is not None:
            stream.close()

    def prepare_shared(self) -> None:
        """Build what threads sharing this provider use, once, before they do (a provider whose
        capabilities allow parallel requests; ``registry.cached_provider``)."""

    def close(self) -> None:
        """Log out and release connections."""
