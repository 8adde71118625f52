"""The Istra websocket: ``ws://HOST/restletrouter/ws-service/<app>``.

A client opens it with its session cookie only (myRCC §4.2; myIstra: "the CSRF
prevention token is not required here, by design"), then binds listeners over
HTTP. Frames are ``{"listenerName": ..., "item": [...]}``.

Each socket has its own outbox and writer task so frames leave in the order
they were produced, whatever thread or handler produced them. Incoming text frames
(myIstra's ``{"keepalive": "true"}``) keep the session alive; websocket pings do not
(a router does not see control frames as session activity), nor do frames pushed.

Fault modes, for the fault suite: a socket can stop answering websocket pings
(``answers_pings``), and can also go ``silent`` (frames produced meanwhile are
lost, as on a network path that died without a FIN); ``push_raw`` sends any text
(malformed or oversized frames) as if the PBX had.

:class:`Coalescer` is myRCC's flood control: "the server will send latest full
representation of the resources every 100 ms ... as far the state of the resource
has been changed". Changes only mark a line dirty; at most once per interval the
latest snapshot of each dirty line is rendered and sent, so intermediate states
may never be seen and an unchanged state may be sent again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from simulator.istra import errors
from simulator.istra.sessions import APPLICATIONS, Session, world_of

if TYPE_CHECKING:
    from simulator.istra.world import IstraWorld

logger = logging.getLogger("simulator.istra")

_CLOSE = object()


class Socket:
    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, session: Session,
                 on_sent: Callable[[str], None] | None = None):
        self.ws = ws
        self.on_sent = on_sent  # told each frame's text once it has gone out (the world's FrameLog)
        self.transport = transport
        self.session = session
        self.frames_sent = 0
        self.frames_withheld = 0
        self.pings_ignored = 0
        self.answers_pings = True
        self.silent = False
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._writer = asyncio.ensure_future(self._write())

    def send(self, frame: dict[str, Any]) -> None:
        self._outbox.put_nowait((json.dumps(frame), None))

    def send_raw(self, text: str, on_delivered: Callable[[], None] | None = None) -> None:
        """Queue ``text``; ``on_delivered`` is called once it has gone out, not when a silent socket drops it."""
        self._outbox.put_nowait((text, on_delivered))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after the frames already queued have gone out."""
        self._outbox.put_nowait((_CLOSE, code, reason))

    def abort(self) -> None:
        """Cut the TCP connection without a close frame, like a network failure."""
        self._writer.cancel()
        if self.transport is not None:
            self.transport.abort()

    async def _write(self) -> None:
        while True:
            item = await self._outbox.get()
            if item[0] is _CLOSE:
                await self.ws.close(code=item[1], message=item[2].encode())
                return
            # Silence is read when the frame would leave, not when it was queued: a frame queued just before
            # a fault is lost with the others, and must not count as told.
            if self.silent:
                self.frames_withheld += 1
                continue
            text, on_delivered = item
            try:
                await self.ws.send_str(text)
                self.frames_sent += 1
                if self.on_sent is not None:
                    self.on_sent(text)
                if on_delivered is not None:
                    on_delivered()
            except (ConnectionError, RuntimeError) as exc:  # the peer went away mid-send
                logger.info("istra websocket send failed: %s", exc)
                return

    def stop(self) -> None:
        self._writer.cancel()


def once(callback: Callable[[], None] | None) -> Callable[[], None] | None:
    """``callback``, called at most once whichever of several sockets delivers first."""
    if callback is None:
        return None
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            callback()

    return call


def send_to_session(session: Session, listener_name: str, items: list[dict[str, Any]],
                    on_delivered: Callable[[], None] | None = None) -> None:
    """Send a frame to every socket of ``session``; ``on_delivered`` once, when the first of them has written it."""
    sockets = list(session.sockets)
    if not sockets:
        return
    on_delivered = once(on_delivered)  # here, not in each caller: a session may have an old and a new socket
    text = json.dumps({"listenerName": listener_name, "item": items})  # once, whatever the sockets
    for socket in sockets:
        socket.send_raw(text, on_delivered)


async def ws_service(request: web.Request) -> web.StreamResponse:
    """GET /restletrouter/ws-service/{app}: upgrade an authenticated session."""
    world = world_of(request)
    app = request.match_info["app"]
    if app not in APPLICATIONS:
        raise errors.not_found(request.path)
    session = world.sessions.get(request.cookies.get(f"{app}_SESSIONID"))
    if session is None or session.app != app:
        raise errors.session_unknown()  # refused before the upgrade: a plain 401
    session.touch()
    # Pings are answered by hand so a fault can stop answering them (``Socket.answers_pings``).
    ws = web.WebSocketResponse(autoping=False)
    await ws.prepare(request)
    socket = Socket(ws, request.transport, session, on_sent=world.frames.record)
    session.sockets.add(socket)
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:  # e.g. {"keepalive": "true"}
                # Only a live session: one past its timeout (swept or not) or forgotten stays expired.
                if world.sessions.get(session.id) is session:
                    session.touch()
            elif message.type == WSMsgType.PING:  # answered, but not activity: the session may still expire
                if socket.answers_pings and not socket.silent:
                    await ws.pong(message.data)
                else:
                    socket.pings_ignored += 1
    finally:
        session.sockets.discard(socket)
        socket.stop()
    return ws


class Coalescer:
    """Sends the latest snapshot of each changed line at most every ``interval()`` seconds."""

    def __init__(
        self,
        session: Session,
        listener_name: str,
        render: Callable[[str], tuple[dict[str, Any], Callable[[], None] | None] | None],
        interval: Callable[[], float],
    ):
        self.session = session
        self.listener_name = listener_name
        self._render = render
        self._interval = interval
        self._dirty: dict[str, None] = {}  # an ordered set of line ids
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def mark(self, line_id: str) -> None:
        self._dirty[line_id] = None
        if self._timer is not None:
            return  # a flush is already due: it will send this line's latest state
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no server loop (pure Python use): nothing to pace
            return
        delay = max(0.0, self._last_flush + self._interval() - time.monotonic())
        self._timer = loop.call_later(delay, self.flush)

    def flush(self) -> None:
        self._timer = None
        self._last_flush = time.monotonic()
        dirty, self._dirty = list(self._dirty), {}
        for line_id in dirty:
            rendered = self._render(line_id)
            if rendered is not None:
                item, on_delivered = rendered
                send_to_session(self.session, self.listener_name, [item], on_delivered)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._dirty.clear()


def stop_pushing(session: Session) -> None:
    """Cancel the session's myRCC pushers: a snapshot already due is not sent."""
    for listener in session.listeners.values():
        if listener.pusher is not None:
            listener.pusher.cancel()


def close_session_sockets(session: Session, code: int, reason: str) -> None:
    stop_pushing(session)
    for socket in list(session.sockets):
        socket.close(code, reason)


def abort_all_sockets(world: IstraWorld) -> int:
    """Cut every open socket, those of forgotten sessions included."""
    count = 0
    for session in world.sessions.with_sockets():
        for socket in list(session.sockets):
            socket.abort()
            session.sockets.discard(socket)
            count += 1
    return count


def close_all_sockets(world: IstraWorld, code: int, reason: str) -> int:
    """Close every open socket (forgotten sessions' too) with a close frame, after its queued frames; the
    sessions stay valid."""
    count = 0
    for session in world.sessions.with_sockets():
        for socket in list(session.sockets):
            socket.close(code, reason)
            count += 1
    return count


def listener_sockets(world: IstraWorld, listener_name: str | None = None, forgotten: bool = False) -> list[Socket]:
    """The sockets of every live session that holds ``listener_name`` (every socket when None).

    ``forgotten``: those of sessions expired with their sockets left open as well.
    """
    sessions = world.sessions.with_sockets() if forgotten else list(world.sessions.sessions.values())
    return [
        socket
        for session in sessions
        if listener_name is None or listener_name in session.listeners
        for socket in list(session.sockets)
    ]
