"""Istra router sessions: Login, cookies, the X-Application token, expiry, Logout.

Shared by every Istra application (myCrm, myRCC, and later myIstra): they differ
only in how a Basic-auth user name is read and who may log in, which each
application module supplies as an *authenticator* to :func:`login_handler`.

What the docs fix, and this module does:

* Login is ``POST v1/service/Login`` with ``X-Application: <app>`` and Basic auth.
  It answers ``Set-Cookie: <app>_SESSIONID=<19 digits>;Path=/restletrouter;HttpOnly``
  and ``X-Application: <app>;<uuid token>``.
* Every later request carries the cookie and ``X-Application: <app>;<token>``. A
  token that does not match the cookie's session is 403 ROUTER_ERR_400; an unknown
  or expired cookie is 401 (myIstra §VII.A.2).
* The token may change: myIstra says to read it from every response. When a
  rotation is pending, the next response of the session carries the new token and
  the old one stops working.
* Sessions expire after a configurable inactivity time (myRCC §3.1, myIstra: 30 min).
"""

from __future__ import annotations

import base64
import binascii
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import TYPE_CHECKING, Any

from aiohttp import web

from simulator.istra import errors
from simulator.keys import STATE

if TYPE_CHECKING:
    from simulator.istra.push import Coalescer, Socket
    from simulator.istra.world import IstraWorld

APPLICATIONS = ("myCrm", "myRCC", "myIstra")
COOKIE_PATH = "/restletrouter"


@dataclass
class Listener:
    """A ``v1/service/EventListener/bean`` created by a session."""

    name: str
    terminal_id: str | None = None  # myCrm: the terminal named in the creation payload
    bound_terminals: set[str] = field(default_factory=set)  # myCrm: bound by GET v1/crm/CallLine
    pusher: Coalescer | None = None  # myRCC: set once GET v1/rcc/CallLine?listenerName= started monitoring


@dataclass
class Session:
    id: str
    app: str
    token: str
    login: str
    enterprise: str
    last_seen: float = field(default_factory=time.monotonic)
    listeners: dict[str, Listener] = field(default_factory=dict)
    sockets: set[Socket] = field(default_factory=set)
    rotate_pending: bool = False

    @property
    def cookie_name(self) -> str:
        return f"{self.app}_SESSIONID"

    def touch(self) -> None:
        self.last_seen = time.monotonic()


def user_key(session: Session) -> tuple[str, str, str]:
    return (session.app, session.login, session.enterprise)


def bean_of(world: IstraWorld, session: Session, name: str) -> Listener | None:
    """The listener bean ``name`` as ``session`` sees it: its own, or (beans scoped per user) one another
    session of the same user created, which this session then binds on its own (``variance.py``)."""
    listener = session.listeners.get(name)
    if listener is None and world.variance.bean_scope == "user" \
            and name in world.variance.user_beans.get(user_key(session), ()):
        listener = session.listeners[name] = Listener(name)
    return listener


class SessionStore:
    """The live sessions, and the forgotten ones whose websockets were left open.

    A session is *forgotten* when it expires (or is expired on demand) without its sockets
    being closed: its cookie gets 401 and nothing is pushed to it any more, but its sockets
    stay open and keep answering pings, as on a router that drops the session and leaves the
    connection to idle. Those are kept in ``lingering`` only so the control API can still list,
    cut and close their sockets.
    """

    def __init__(self, timeout: Callable[[], float]):
        self._timeout = timeout  # read on every check so a config change applies at once
        self.sessions: dict[str, Session] = {}
        self.lingering: dict[str, Session] = {}

    def create(self, app: str, login: str, enterprise: str) -> Session:
        session_id = str(random.randint(10**18, 2**63 - 1))  # 19 digits, like 3353130538180092770
        session = Session(session_id, app, new_token(), login, enterprise)
        self.sessions[session_id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        session = self.sessions.get(session_id or "")
        if session is None or self.is_expired(session):
            return None
        return session

    def is_expired(self, session: Session) -> bool:
        return time.monotonic() - session.last_seen > self._timeout()

    def of_app(self, app: str) -> list[Session]:
        """The live sessions of ``app``: what pushes go to. One past its timeout but not yet swept is not live."""
        # One clock read and one timeout for all: this runs for every event, over every session.
        oldest = time.monotonic() - self._timeout()
        return [s for s in self.sessions.values() if s.app == app and s.last_seen >= oldest]

    def remove(self, session: Session) -> None:
        self.sessions.pop(session.id, None)

    def take(self, app: str | None = None) -> list[Session]:
        """Remove and return the sessions of ``app`` (all when None)."""
        taken = [s for s in self.sessions.values() if app in (None, s.app)]
        for session in taken:
            self.remove(session)
        return taken

    def take_expired(self) -> list[Session]:
        expired = [s for s in self.sessions.values() if self.is_expired(s)]
        for session in expired:
            self.remove(session)
        return expired

    def take_all(self) -> list[Session]:
        """Every session, the forgotten ones still holding sockets included; the store is left empty."""
        taken = self.with_sockets()
        self.sessions.clear()
        self.lingering.clear()
        return taken

    def keep_sockets_of(self, session: Session) -> None:
        """``session`` was forgotten (already removed) but its sockets stay open."""
        if session.sockets:
            self.lingering[session.id] = session

    def with_sockets(self) -> list[Session]:
        """The live sessions, then the forgotten ones whose sockets are still open."""
        for session_id, session in list(self.lingering.items()):
            if not session.sockets:
                del self.lingering[session_id]
        return list(self.sessions.values()) + list(self.lingering.values())

    def is_live(self, session: Session) -> bool:
        return self.sessions.get(session.id) is session


def new_token() -> str:
    return str(uuid.uuid4())


# --- request parsing ----------------------------------------------------------------

def parse_x_application(value: str | None) -> tuple[str | None, str | None]:
    """``myCrm`` -> ("myCrm", None); ``myCrm;<token>`` -> ("myCrm", "<token>")."""
    if not value:
        return None, None
    app, _, token = value.strip().partition(";")
    return app.strip() or None, token.strip() or None


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """Basic credentials split at the first colon: user names may hold ``:`` only as a prefix.

    myCrm's ``ENDUSER:chatfield:0000`` decodes to user ``ENDUSER`` and password
    ``chatfield:0000``; authenticators re-join them (see :func:`split_enduser`).
    """
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def split_enduser(user: str, password: str) -> tuple[str, str] | None:
    """``ENDUSER:<login>:<password>`` -> (login, password); None without the prefix."""
    if user != "ENDUSER":
        return None
    login, sep, real_password = password.partition(":")
    return (login, real_password) if sep and login else None


# --- authenticated requests ---------------------------------------------------------

def world_of(request: web.Request) -> IstraWorld:
    return request.config_dict[STATE].istra


def resolve_session(request: web.Request, world: IstraWorld) -> Session:
    """The request's session, or the 401/403 the router answers."""
    app, token = parse_x_application(request.headers.get("X-Application"))
    session_id = _session_cookie(request, app)
    if session_id is None:
        raise errors.session_unknown()
    session = world.sessions.get(session_id)
    if session is None:
        raise errors.session_unknown()
    if app != session.app or token != session.token:
        raise errors.cookie_mismatch()
    session.touch()
    return session


def _session_cookie(request: web.Request, app: str | None) -> str | None:
    if app is not None and f"{app}_SESSIONID" in request.cookies:
        return request.cookies[f"{app}_SESSIONID"]
    # No (or another) application named: any of our cookies still identifies a session,
    # so that a missing token is a 403 mismatch rather than a 401.
    for name in APPLICATIONS:
        if f"{name}_SESSIONID" in request.cookies:
            return request.cookies[f"{name}_SESSIONID"]
    return None


Handler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def authenticated(*apps: str, iptc: bool = True) -> Callable[[Handler], Callable[[web.Request], Awaitable[Any]]]:
    """Decorate a handler taking (request, session): checks cookie+token, the
    application, the IPTC when ``iptc``, and hands out a rotated token."""

    def decorate(handler: Handler):
        @wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            world = world_of(request)
            session = resolve_session(request, world)
            if apps and session.app not in apps:
                raise errors.application_not_allowed(session.app)
            if iptc and not world.config.iptc_up:
                raise errors.iptc_not_started()
            response = await handler(request, session)
            _hand_out_rotated_token(session, response)
            return response

        return wrapper

    return decorate


def _hand_out_rotated_token(session: Session, response: web.StreamResponse) -> None:
    # The new token rides on an ordinary response; from then on only it is accepted.
    if session.rotate_pending and not response.prepared:
        session.token = new_token()
        session.rotate_pending = False
        response.headers["X-Application"] = f"{session.app};{session.token}"


# --- Login / Logout -----------------------------------------------------------------

# An authenticator gets the Basic user and password and returns (login, enterprise),
# or raises the IstraError its application answers.
Authenticator = Callable[["IstraWorld", str, str], tuple[str, str]]


def claimed_login(user: str, password: str) -> tuple[str, str] | None:
    """(login, password) a Basic user names, whichever application's form: ``ENDUSER:<login>`` or ``<login>|<ent>``."""
    enduser = split_enduser(user, password)
    if enduser is not None:
        return enduser
    login, sep, _ = user.rpartition("|")
    return (login, password) if sep and login else None


def login_handler(authenticators: dict[str, Authenticator]):
    async def login(request: web.Request) -> web.Response:
        world = world_of(request)
        app, _ = parse_x_application(request.headers.get("X-Application"))
        authenticate = authenticators.get(app or "")
        credentials = parse_basic(request.headers.get("Authorization"))
        if authenticate is None or credentials is None:
            raise errors.authentication_failed()
        # Failures count per user across the applications (one Istra account); only a wrong password counts.
        claimed = claimed_login(*credentials)
        user = world.directory.users.get(claimed[0]) if claimed else None
        if user is not None and user.locked:
            # A suspended user gets what a wrong password gets (the docs print no other answer, and a guard
            # against brute force tells the guesser nothing), even with the right password.
            raise errors.authentication_failed()
        if user is not None:
            world.note_login(user, password_right=claimed[1] == user.password)
        login_name, enterprise = authenticate(world, *credentials)
        session = world.sessions.create(app, login_name, enterprise)
        response = web.Response(status=200)
        response.headers["X-Application"] = f"{app};{session.token}"
        # Written by hand: aiohttp's cookie API would reorder and re-space the attributes.
        response.headers.add("Set-Cookie", f"{session.cookie_name}={session.id};Path={COOKIE_PATH};HttpOnly")
        return response

    return login


@authenticated(iptc=False)
async def logout(request: web.Request, session: Session) -> web.Response:
    """myRCC §4.1: 204 and the cookie expired.

    The doc's sample names ``myIstra_SESSIONID`` in a myRCC logout, a copy-paste slip:
    the cookie expired here is the session's own.
    """
    world_of(request).end_session(session, close_code=1000, reason="logged out")
    response = web.Response(status=204)
    response.headers.add(
        "Set-Cookie",
        f"{session.cookie_name}={session.id};Path={COOKIE_PATH};Expires=Thu, 01-Jan-1970 00:00:00 GMT",
    )
    return response
