"""retailCRM's API v5, the methods ctihub uses: ``/api/v5/integration-modules/...``, ``/api/v5/telephony/...``
``/api/v5/users/{id}/status`` and ``/api/v5/reference/sites`` (the shops' names).

Every request goes through :func:`endpoint`: logged (with its form fields, for
tests to assert exact encodings), slowed or failed when the control API says
so, counted against its key's rate limit, and refused without a known API key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import wraps
from typing import Any

from aiohttp import web

from simulator.keys import STATE
from simulator.retailcrm.world import GENERAL, TELEPHONY, ApiError, RetailCrmWorld

# What a proxy or a maintenance switch in front of the API answers instead of retailCRM's JSON.
DOWN_PAGE = ("<!DOCTYPE html><html><head><title>Technical works</title></head>"
             "<body><h1>We are updating the system</h1><p>Please try again in a few minutes.</p></body></html>")

Handler = Callable[[web.Request, RetailCrmWorld, dict[str, str]], Awaitable[tuple[int, dict[str, Any]]]]


def world_of(request: web.Request) -> RetailCrmWorld:
    return request.app[STATE].retailcrm


def endpoint(handler: Handler):
    @wraps(handler)
    async def wrapper(request: web.Request) -> web.Response:
        world = world_of(request)
        form = dict(await request.post()) if request.method == "POST" else {}
        form = {k: v for k, v in form.items() if isinstance(v, str)}
        api_key = request.headers.get("X-API-KEY") or request.query.get("apiKey") or form.get("apiKey")
        kind = TELEPHONY if request.path.startswith("/api/v5/telephony/") else GENERAL
        entry = world.log_request(request.method, request.path, dict(request.query), form, api_key, kind)
        status, body = await _answer(request, world, form, api_key, kind, handler)
        entry["status"] = status
        if isinstance(body, str):
            return web.Response(text=body, status=status, content_type="text/html")
        return web.json_response(body, status=status)

    return wrapper


async def _answer(request, world: RetailCrmWorld, form, api_key, kind, handler) -> tuple[int, dict[str, Any] | str]:
    # A request is up or down as retailCRM was when it arrived: a slow answer already under way is
    # still processed if retailCRM goes down meanwhile (as a server that accepted it would).
    config = replace(world.config)
    if config.delay:
        await asyncio.sleep(config.delay)
    if config.down:
        if config.down_html:
            return config.down_status, DOWN_PAGE
        return config.down_status, {"success": False, "errorMsg": "Service temporarily unavailable"}
    if not world.take_slot(api_key, kind, time.monotonic()):
        return 503, {"success": False, "errorMsg": "Rate limit exceeded"}
    if not api_key:
        return 403, {"success": False, "errorMsg": '"apiKey" is missing.'}
    if api_key not in world.api_keys:
        return 403, {"success": False, "errorMsg": 'Wrong "apiKey" value.'}
    try:
        return await handler(request, world, form)
    except ApiError as exc:
        return exc.status, exc.body()


@endpoint
async def edit_module(request: web.Request, world: RetailCrmWorld, form: dict[str, str]):
    return world.edit_module(request.match_info["code"], form)


@endpoint
async def get_module(request: web.Request, world: RetailCrmWorld, form: dict[str, str]):
    module = world.modules.get(request.match_info["code"])
    if module is None:
        raise ApiError(404, "Not found")
    return 200, {"success": True, "integrationModule": module}


@endpoint
async def call_event(request: web.Request, world: RetailCrmWorld, form: dict[str, str]):
    return 200, world.call_event(form)


@endpoint
async def calls_upload(request: web.Request, world: RetailCrmWorld, form: dict[str, str]):
    return 200, world.upload(form)


@endpoint
async def manager(request: web.Request, world: RetailCrmWorld, form: dict[str, str]):
    origin = f"{request.scheme}://{request.host}"
    return 200, world.manager(dict(request.query), origin)


@endpoint
async def sites(request: web.Request, world: RetailCrmWorld, form: dict[str, str]):
    with world.lock:
        return 200, {"success": True, "sites": {code: dict(site) for code, site in world.sites.items()}}


@endpoint
async def user_status(request: web.Request, world: RetailCrmWorld, form: dict[str, str]):
    return 200, world.set_user_status(request.match_info["id"], form)


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/api/v5/integration-modules/{code}/edit", edit_module)
    router.add_get("/api/v5/integration-modules/{code}", get_module)
    router.add_post("/api/v5/telephony/call/event", call_event)
    router.add_post("/api/v5/telephony/calls/upload", calls_upload)
    router.add_get("/api/v5/telephony/manager", manager)
    router.add_post("/api/v5/users/{id}/status", user_status)
    router.add_get("/api/v5/reference/sites", sites)
