"""The ``/restletrouter`` front door, in front of every Istra application.

For each request it: records it in the request log; waits ``answer_delay`` (a slow
PBX, for tests of what waits on it); answers an armed redirect
(myRCC §3.5: 301/302 with an absolute ``Location``) or an armed failure; turns
:class:`~simulator.istra.errors.IstraError` into its JSON body; and gzips the
answer when the client accepts it (myIstra §VII.A.4 recommends
``Accept-Encoding: gzip,deflate``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from simulator.istra import errors
from simulator.istra.sessions import parse_x_application, world_of
from simulator.istra.world import IstraWorld


@web.middleware
async def restletrouter_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    world = world_of(request)
    entry = world.requests.record(
        request.method, request.path, dict(request.query), dict(request.headers), await _body_text(request)
    )
    if world.config.answer_delay:
        await asyncio.sleep(world.config.answer_delay)
    try:
        response = _armed_answer(world, request) or await handler(request)
    except errors.IstraError as exc:
        response = _error_response(exc)
    except web.HTTPException as exc:  # aiohttp's own 404/405 for paths we do not serve
        if exc.status >= 400:
            response = _error_response(errors.router_error(exc.status, f"ROUTER_ERR_{exc.status}", exc.reason))
        else:
            raise
    entry["status"] = response.status
    _maybe_gzip(request, response)
    return response


async def _body_text(request: web.Request) -> str:
    if not request.can_read_body:
        return ""
    raw = await request.read()  # aiohttp keeps it, so handlers can read it again
    return raw.decode("utf-8", errors="replace")


def _matches(rule: Any, request: web.Request) -> bool:
    app, _ = parse_x_application(request.headers.get("X-Application"))
    if rule.app is not None and rule.app != app and f"/ws-service/{rule.app}" not in request.path:
        return False
    return rule.path is None or rule.path in request.path


def _armed_answer(world: IstraWorld, request: web.Request) -> web.StreamResponse | None:
    for redirect in list(world.redirects):
        if _matches(redirect, request):
            _use(world.redirects, redirect)
            base = redirect.base_url or str(request.url.origin())
            response = web.Response(status=redirect.status)
            response.headers["Location"] = f"{base}{request.rel_url}"
            return response
    for fault in list(world.faults):
        if _matches(fault, request):
            _use(world.faults, fault)
            if isinstance(fault.body, str):  # a page from something in front of Istra
                return web.Response(text=fault.body, status=fault.status, content_type="text/html")
            return web.json_response(fault.body, status=fault.status)
    return None


def _use(rules: list[Any], rule: Any) -> None:
    rule.remaining -= 1
    if rule.remaining <= 0:
        rules.remove(rule)


def _error_response(exc: errors.IstraError) -> web.Response:
    return web.json_response(exc.body, status=exc.status, headers=exc.headers)


def _maybe_gzip(request: web.Request, response: web.StreamResponse) -> None:
    accepts = request.headers.get("Accept-Encoding", "").lower()
    if "gzip" not in accepts or response.prepared or not isinstance(response, web.Response):
        return
    if response.body:
        response.enable_compression(web.ContentCoding.gzip)
