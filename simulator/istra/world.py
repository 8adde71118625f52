"""The simulated Istra platform: directory, calls, sessions, switches, request log.

``SimulatorState.istra`` is one :class:`IstraWorld`. Tests and the demo drive it
either through the control API (``/_sim/istra/...``, see ``control.py``) or by
calling its public methods from Python.

Those methods may be called from any thread: when the server runs its loop in
another thread (``simulator.harness.RunningSimulator``), :func:`on_loop` runs the
call on that loop and waits, because the state and the websockets belong to it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from simulator.istra import push
from simulator.istra.calls import CALL_MOVES, CallBook, InvalidTransition, Line, Party
from simulator.istra.directory import Directory, Extension, User
from simulator.istra.myistra import EndUserBook
from simulator.istra.script import CallScript
from simulator.istra.sessions import APPLICATIONS, Session, SessionStore

F = TypeVar("F", bound=Callable[..., Any])


def on_loop(method: F) -> F:
    """Run ``method`` on the server's loop when called from another thread."""

    @functools.wraps(method)
    def wrapper(self: IstraWorld, *args: Any, **kwargs: Any) -> Any:
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop or not loop.is_running():
            return method(self, *args, **kwargs)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(method(self, *args, **kwargs))
            except BaseException as exc:  # handed back to the calling thread
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    return wrapper  # type: ignore[return-value]


@dataclass
class IstraConfig:
    session_timeout: float = 1800.0  # seconds of inactivity (myIstra's default: 30 min)
    push_interval: float = 0.1  # myRCC: at most one snapshot per line every 100 ms
    iptc_up: bool = True  # False: telephony resources answer 503 ROUTER_ERR_503
    answer_delay: float = 0.0  # seconds every /restletrouter answer waits: a slow PBX
    # False: an expired session is forgotten (cookie 401, nothing pushed) but its websockets stay open and keep
    # answering pings, so only a REST request tells the client. Applies to inactivity expiry and to
    # expire_sessions() without an explicit close_sockets.
    expiry_closes_sockets: bool = True
    # Suspend a user after this many wrong passwords in a row (myIstra: "accounts can be suspended in case of
    # too many failures in a row"); 0: never. A suspended user's logins are refused until unlock_user().
    lockout_after: int = 0
    # myIstra's lists return at most this many items a page, whatever length is asked (the doc only shows 20
    # asked and 20 returned); 0: as many as asked.
    max_page_length: int = 0


@dataclass
class Fault:
    """Answer the next ``remaining`` matching requests with ``status`` and ``body``.

    A body that is text goes out as an HTML page: what a proxy or the servlet container in front of Istra
    answers, not Istra itself (its errors are JSON with a code).
    """

    remaining: int
    status: int = 503
    body: dict[str, Any] | str = field(
        default_factory=lambda: {"code": "ROUTER_ERR_503", "message": "IPTC not started"})
    app: str | None = None  # only requests of this X-Application
    path: str | None = None  # only paths containing this


@dataclass
class Redirect:
    """Answer the next ``remaining`` matching requests with a redirect to the same path."""

    remaining: int
    status: int = 302
    base_url: str | None = None  # e.g. "http://127.0.0.1:8101"; None: this server
    app: str | None = None
    path: str | None = None


@dataclass
class Variance:
    """Where this PBX departs from our reading of the specs (``variance.py``); all off by default."""

    unpullable: dict[str, int] = field(default_factory=dict)  # line id -> status its GET answers
    state_names: dict[str, str] = field(default_factory=dict)  # state -> the name snapshots show
    line_state_names: dict[str, tuple[str, str]] = field(default_factory=dict)  # line id -> (state, name)
    # "session": a listener bean is its session's (it dies with it); "user": the user's, shared by all its sessions
    bean_scope: str = "session"
    user_beans: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)  # (app, login, ent) -> names
    # app ("myCrm", "myRCC") -> {field: value}: the value its event items / call lines carry for that field
    field_values: dict[str, dict[str, Any]] = field(default_factory=dict)


class RequestLog:
    """What the router received, so tests can assert exact request shapes."""

    def __init__(self, limit: int = 5000):
        self.entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        self._seq = itertools.count(1)

    def record(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: str) -> dict[str, Any]:
        entry = {
            "seq": next(self._seq), "time": time.time(), "method": method, "path": path,
            "query": query, "headers": headers, "body": body, "status": None,
        }
        self.entries.append(entry)
        return entry

    def since(self, seq: int = 0) -> list[dict[str, Any]]:
        return [dict(e) for e in self.entries if e["seq"] > seq]

    def clear(self) -> None:
        self.entries.clear()


class FrameLog:
    """When each websocket frame left for the client (``time.time()`` just after the send), off by default.

    Benchmarks time a frame from the moment it leaves the PBX to what ctihub does with it (retailCRM's
    call event). Kept only while ``enabled``: a long demo would otherwise grow it.
    """

    def __init__(self, limit: int = 200_000):
        self.enabled = False
        self.entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        self._seq = itertools.count(1)

    def record(self, text: str) -> None:
        if self.enabled:
            self.entries.append({"seq": next(self._seq), "time": time.time(), "text": text})

    def since(self, seq: int = 0) -> list[dict[str, Any]]:
        return [{"seq": e["seq"], "time": e["time"], "frame": json.loads(e["text"])}
                for e in list(self.entries) if e["seq"] > seq]

    def clear(self) -> None:
        self.entries.clear()


class IstraWorld:
    def __init__(self) -> None:
        self.config = IstraConfig()
        self.directory = Directory()
        self.calls = CallBook(self.directory)
        self.sessions = SessionStore(lambda: self.config.session_timeout)
        self.enduser = EndUserBook(self.sessions)  # myIstra: voicemail, call history, caller-ID
        self.requests = RequestLog()
        self.frames = FrameLog()
        self.faults: list[Fault] = []
        self.redirects: list[Redirect] = []
        self.variance = Variance()
        self.script = CallScript()  # call moves played at their times (script.py)
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- directory ---------------------------------------------------------------------

    @on_loop
    def add_user(self, login: str, password: str, enterprise: str = "e1", mycrm: bool = True, myrcc: bool = True) -> User:
        return self.directory.add_user(User(login, password, enterprise, mycrm, myrcc))

    @on_loop
    def unlock_user(self, login: str) -> User:
        """An Istra administrator lifts the suspension (and the count of failures)."""
        user = self.directory.users.get(login)
        if user is None:
            raise KeyError(f"no user {login!r}")
        user.failures, user.locked = 0, False
        return user

    def note_login(self, user: User, password_right: bool) -> None:
        """Count a wrong password against ``user``; a right one ends the run (called on the loop by Login)."""
        if password_right:
            user.failures = 0
            return
        user.failures += 1
        if self.config.lockout_after and user.failures >= self.config.lockout_after:
            user.locked = True

    @on_loop
    def add_extension(self, id: str, number: str, **attrs: Any) -> Extension:  # noqa: A002 - the API's word
        return self.directory.add_extension(Extension(str(id), str(number), **attrs))

    add_terminal = add_extension  # myCrm's word for the same thing

    @on_loop
    def update_extension(self, id: str, **attrs: Any) -> Extension:  # noqa: A002
        extension = self._extension(id)
        known = {f.name for f in fields(Extension)}
        for name, value in attrs.items():
            if name not in known or name == "id":
                raise ValueError(f"unknown extension attribute {name!r}")
            setattr(extension, name, value)
        return extension

    # --- calls, PBX side -------------------------------------------------------------------

    @on_loop
    def incoming_call(self, terminal_id: str, caller: str, label: str = "", e164: str = "",
                      acd_id: str | None = None, photo: str = "") -> Line:
        """A call arrives at ``terminal_id`` from ``caller`` (an internal number rings both ends)."""
        return self.calls.incoming(self._extension(terminal_id), Party(caller, label, e164 or caller, photo), acd_id)

    @on_loop
    def outgoing_call(self, terminal_id: str, destination: str, label: str = "", e164: str = "") -> Line:
        """The user dials ``destination`` on the handset of ``terminal_id``."""
        return self.calls.outgoing(self._extension(terminal_id), Party(destination, label, e164 or destination))

    @on_loop
    def answer(self, call_id: str) -> Line:
        line = self.call(call_id)
        self.calls.answer(line)
        return line

    @on_loop
    def hold(self, call_id: str) -> Line:
        line = self.call(call_id)
        self.calls.hold(line)
        return line

    @on_loop
    def unhold(self, call_id: str) -> Line:
        line = self.call(call_id)
        self.calls.unhold(line)
        return line

    @on_loop
    def hangup(self, call_id: str, cause: str = "disconnect") -> Line:
        line = self.call(call_id)
        self.calls.hangup(line, cause)
        return line

    def move_call(self, call_id: str, move: str, cause: str = "disconnect") -> Line:
        """One of ``CALL_MOVES`` on a call under way, as the control API and a traffic script name them."""
        if move == "hangup":
            return self.hangup(call_id, cause)
        if move in CALL_MOVES:
            return getattr(self, move)(call_id)
        raise KeyError(f"no call move {move!r}; {', '.join(CALL_MOVES)}")

    # --- sessions and sockets ----------------------------------------------------------

    def end_session(self, session: Session, close_code: int, reason: str) -> None:
        self.sessions.remove(session)
        self.enduser.subscriptions.pop(session.id, None)
        push.close_session_sockets(session, close_code, reason)

    @on_loop
    def expire_sessions(self, app: str | None = None, close_sockets: bool | None = None) -> int:
        """Expire the sessions of ``app`` (every session when None) now: their cookies get 401.

        ``close_sockets`` (None: the config's ``expiry_closes_sockets``): their websockets close
        with 1008; False: they stay open, answering pings, and nothing is pushed to them any more.
        """
        if app is not None and app not in APPLICATIONS:
            raise ValueError(f"app must be one of {', '.join(APPLICATIONS)}")
        if close_sockets is not None and not isinstance(close_sockets, bool):
            raise ValueError("closeSockets must be true or false")
        taken = self.sessions.take(app)
        for session in taken:
            self._expire(session, close_sockets)
        return len(taken)

    @on_loop
    def sweep_sessions(self) -> int:
        """Expire the sessions idle past ``session_timeout`` (the server calls this every ``SWEEP_EVERY``)."""
        expired = self.sessions.take_expired()
        for session in expired:
            self._expire(session, None)
        return len(expired)

    def _expire(self, session: Session, close_sockets: bool | None) -> None:
        self.enduser.subscriptions.pop(session.id, None)
        if self.config.expiry_closes_sockets if close_sockets is None else close_sockets:
            push.close_session_sockets(session, 1008, "session expired")
        else:
            push.stop_pushing(session)
            self.sessions.keep_sockets_of(session)

    @on_loop
    def rotate_tokens(self, app: str | None = None) -> int:
        """Every live session (of ``app``) gets a new token on its next successful response."""
        sessions = [s for s in self.sessions.sessions.values() if app in (None, s.app)]
        for session in sessions:
            session.rotate_pending = True
        return len(sessions)

    @on_loop
    def drop_websockets(self) -> int:
        """Cut every websocket abruptly (no close frame)."""
        return push.abort_all_sockets(self)

    @on_loop
    def close_websockets(self, code: int = 1000, reason: str = "") -> int:
        """Close every websocket cleanly, with a close frame (``code``, ``reason``): e.g. a PBX restarting."""
        return push.close_all_sockets(self, code, reason)

    @on_loop
    def mute_pings(self, listener: str | None = None, mute: bool = True, silent: bool = False) -> int:
        """Sockets holding ``listener`` (all when None) stop answering pings; ``silent`` also loses their frames.

        ``mute=False`` brings them back. Only sockets open now are affected (those of forgotten sessions too):
        a reconnect gets a healthy socket.
        """
        sockets = push.listener_sockets(self, listener, forgotten=True)
        for socket in sockets:
            socket.answers_pings = not mute
            socket.silent = mute and silent
        return len(sockets)

    @on_loop
    def push_raw(self, text: str, listener: str | None = None) -> int:
        """Push ``text`` as it is (malformed, oversized...) on the live sessions' sockets holding ``listener``."""
        sockets = push.listener_sockets(self, listener)
        for socket in sockets:
            socket.send_raw(text)
        return len(sockets)

    @on_loop
    def socket_stats(self) -> list[dict[str, Any]]:
        return [
            {"session": session.id, "app": session.app, "login": session.login, "listeners": sorted(session.listeners),
             "sessionLive": self.sessions.is_live(session),
             "framesSent": socket.frames_sent, "framesWithheld": socket.frames_withheld,
             "pingsIgnored": socket.pings_ignored, "answersPings": socket.answers_pings, "silent": socket.silent}
            for session in self.sessions.with_sockets()
            for socket in list(session.sockets)
        ]

    # --- router switches -----------------------------------------------------------------

    @on_loop
    def fail_next(self, count: int, status: int = 503, body: dict[str, Any] | str | None = None,
                  app: str | None = None, path: str | None = None) -> Fault:
        fault = Fault(count, status, app=app, path=path)
        if body is not None:
            fault.body = body
        self.faults.append(fault)
        return fault

    @on_loop
    def redirect_next(self, count: int, status: int = 302, base_url: str | None = None,
                      app: str | None = None, path: str | None = None) -> Redirect:
        redirect = Redirect(count, status, base_url.rstrip("/") if base_url else None, app, path)
        self.redirects.append(redirect)
        return redirect

    @on_loop
    def set_iptc(self, up: bool) -> None:
        self.config.iptc_up = up

    @on_loop
    def configure(self, **settings: Any) -> IstraConfig:
        known = {f.name: f for f in fields(IstraConfig)}
        for name, value in settings.items():
            if name not in known:
                raise ValueError(f"unknown setting {name!r}")
            if isinstance(known[name].default, bool) and not isinstance(value, bool):
                raise ValueError(f"setting {name!r} must be true or false")
            if type(known[name].default) is int and (type(value) is not int or value < 0):
                raise ValueError(f"setting {name!r} must be a whole number, 0 or more")
        for name, value in settings.items():
            setattr(self.config, name, value)
        return self.config

    @on_loop
    def requests_received(self, since: int = 0) -> list[dict[str, Any]]:
        return self.requests.since(since)

    @on_loop
    def clear_requests(self) -> None:
        self.requests.clear()

    @on_loop
    def reset(self) -> None:
        """Back to an empty platform with default settings; open sockets are closed."""
        for session in self.sessions.take_all():
            push.close_session_sockets(session, 1001, "simulator reset")
        self.config = IstraConfig()
        self.directory.clear()
        self.calls.clear()
        self.enduser.clear()
        self.requests.clear()
        self.frames.enabled = False
        self.frames.clear()
        self.faults.clear()
        self.redirects.clear()
        self.variance = Variance()
        self.script.clear()

    # --- helpers -------------------------------------------------------------------------

    def _extension(self, extension_id: str) -> Extension:
        extension = self.directory.extension(extension_id)
        if extension is None:
            raise KeyError(f"no terminal/extension {extension_id!r}")
        return extension

    def call(self, call_id: str) -> Line:
        """The line ``call_id`` (myCrm callId = myRCC lineId); KeyError if unknown."""
        line = self.calls.line(call_id)
        if line is None:
            raise KeyError(f"no call {call_id!r}")
        return line


__all__ = ["IstraWorld", "IstraConfig", "Fault", "Redirect", "Variance", "InvalidTransition"]
