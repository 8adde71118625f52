"""``v1/service/EventListener/bean``: create and delete listener identifiers.

myRCC sends ``{"name": "CallLines"}``. The myCrm doc prints the payload as two
JSON objects on two lines, ``{"name":"CallLines"}`` then
``{"terminalId":"5985841581756135023"}``, and its Content-Length (57) matches
exactly that, so the body is read as a sequence of JSON objects merged into one.
A single object (with or without ``terminalId``) is accepted as well.

The docs never say whose a bean is. By default it is its session's: deleting it acts on that
session only, and it dies with the session. With ``faults/bean-scope`` ``{"scope": "user"}``
(``variance.py``) it is the user's: any session of the user may bind it (each session's binding
is its own), deleting it ends it for every session of the user, and it outlives the session
that created it (a client that never deletes it leaks it).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from simulator.istra import errors
from simulator.istra.sessions import Listener, Session, authenticated, user_key, world_of


def parse_json_objects(text: str) -> dict[str, Any]:
    """Merge the JSON objects found one after the other in ``text``."""
    decoder = json.JSONDecoder()
    merged: dict[str, Any] = {}
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return merged
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise errors.bad_request(f"malformed JSON payload: {exc.msg}") from exc
        if not isinstance(value, dict):
            raise errors.bad_request("payload must be JSON objects")
        merged.update(value)


def listener_uri(name: str) -> str:
    return f"v1/service/EventListener/bean/{name}"


@authenticated(iptc=False)
async def create_listener(request: web.Request, session: Session) -> web.Response:
    payload = parse_json_objects(await request.text())
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        raise errors.bad_request("listener name is missing")
    terminal_id = payload.get("terminalId")
    if terminal_id is not None:
        terminal_id = str(terminal_id)
        _check_own_terminal(request, session, terminal_id)
    world = world_of(request)
    _drop_listener(session, name)  # creating an existing name replaces it (this session's binding of it)
    session.listeners[name] = Listener(name, terminal_id)
    if world.variance.bean_scope == "user":
        world.variance.user_beans.setdefault(user_key(session), set()).add(name)
    return web.json_response({"name": name, "restUri": listener_uri(name)})


@authenticated(iptc=False)
async def delete_listener(request: web.Request, session: Session) -> web.Response:
    name = request.match_info["name"]
    world = world_of(request)
    if world.variance.bean_scope == "user":
        beans = world.variance.user_beans.get(user_key(session), set())
        if name not in beans:
            raise errors.bad_request("bad listener name")
        beans.discard(name)
        # The user's bean: gone for every session of the user, the monitoring each started with it too.
        for other in [*world.sessions.sessions.values(), *world.sessions.lingering.values()]:
            if user_key(other) == user_key(session):
                _drop_listener(other, name)
        return web.Response(status=200)
    if name not in session.listeners:
        raise errors.bad_request("bad listener name")
    _drop_listener(session, name)  # this also stops the monitoring it started (myRCC §3.3)
    return web.Response(status=200)


def _drop_listener(session: Session, name: str) -> None:
    listener = session.listeners.pop(name, None)
    if listener is not None and listener.pusher is not None:
        listener.pusher.cancel()


def _check_own_terminal(request: web.Request, session: Session, terminal_id: str) -> None:
    world = world_of(request)
    if session.app != "myCrm":
        return
    if terminal_id not in {t.id for t in world.directory.terminals_of(session.login)}:
        raise errors.bad_request("bad terminal ID")
