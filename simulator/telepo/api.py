"""Telepo's REST API as ctihub calls it: ``/api/call/control/v1/...`` and ``/api/call/state/v1/snapshot/...``.

Every request is logged (headers and body, for tests to assert exact shapes),
then the bearer ticket is checked for the path's domain before anything else.
Errors are JSON ``{"code", "message"}`` (the spec shows none; these are the
shapes a client has to cope with: 401 no/unknown ticket, 403 wrong domain, scope
or licence, 404 unknown user/device/call, 400 a bad body or an action the call
does not allow, 409 a stateToken mismatch).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from simulator.keys import STATE
from simulator.telepo.world import TelepoError, TelepoWorld, bad_request

CONTROL = "/api/call/control/v1"


def world_of(request: web.Request) -> TelepoWorld:
    return request.app[STATE].telepo


async def _logged(request: web.Request, handle) -> web.Response:
    world = world_of(request)
    text = (await request.read()).decode("utf-8", errors="replace") if request.can_read_body else ""
    entry = world.log_request(request.method, request.path, dict(request.headers), text)
    try:
        status, body = 200, handle(world, text)
    except TelepoError as exc:
        status, body = exc.status, exc.body()
    entry["status"] = status
    return web.json_response(body, status=status)


def _json_body(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        raise bad_request("the body is not JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


async def snapshot(request: web.Request) -> web.Response:
    domain, user_id = request.match_info["domain"], request.match_info["userId"]

    def handle(world: TelepoWorld, text: str):
        world.authorize(request.headers.get("Authorization"), domain, user_id)
        return world.snapshot(user_id)

    return await _logged(request, handle)


async def make(request: web.Request) -> web.Response:
    domain, user_id = request.match_info["domain"], request.match_info["userId"]

    def handle(world: TelepoWorld, text: str):
        user = world.authorize(request.headers.get("Authorization"), domain, user_id)
        return world.make(user, request.match_info["deviceId"], _json_body(text))

    return await _logged(request, handle)


async def call_action(request: web.Request) -> web.Response:
    domain, user_id = request.match_info["domain"], request.match_info["userId"]

    def handle(world: TelepoWorld, text: str):
        user = world.authorize(request.headers.get("Authorization"), domain, user_id)
        return world.act(user, request.match_info["action"], request.match_info["callId"], _json_body(text))

    return await _logged(request, handle)


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/api/call/state/v1/snapshot/{domain}/{userId}", snapshot)
    router.add_post(CONTROL + "/make/{domain}/{userId}/{deviceId}", make)
    router.add_post(CONTROL + "/{action}/{domain}/{userId}/{callId}", call_action)
