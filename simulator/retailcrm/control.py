"""The retailCRM control API: ``/_sim/retailcrm/...``, JSON in and out, for tests and the demo.

A thin HTTP skin over :class:`~simulator.retailcrm.world.RetailCrmWorld` and the
caller side (``caller.py``). Errors: 400 bad input, 404 unknown user/module;
body ``{"error": "..."}``.

=======  =====================================  ===========================================================
method   path                                   body / query
=======  =====================================  ===========================================================
POST     /_sim/retailcrm/reset                  -
GET      /_sim/retailcrm/state                  -
PATCH    /_sim/retailcrm/config                 {down, downStatus, downHtml, delay, rateLimit,
                                                 telephonyRateLimit, uploadLimit}
POST     /_sim/retailcrm/api-keys               {key}
POST     /_sim/retailcrm/sites                  {code, name}
POST     /_sim/retailcrm/users                  {id, firstName, lastName, email, status, online}
PATCH    /_sim/retailcrm/users/{id}             {status, online, firstName, lastName, email}
POST     /_sim/retailcrm/customers              {id, phones, firstName, lastName, email, managerId}
GET      /_sim/retailcrm/modules                -  (every registered integrationModule, by code)
GET      /_sim/retailcrm/events                 -  (call events received, oldest first)
GET      /_sim/retailcrm/calls                  -  (uploaded calls, by externalId)
GET      /_sim/retailcrm/uploads                -  (every upload request: calls, processed, duplicates)
GET      /_sim/retailcrm/status-changes         -  (every user status set through the API: userId, status)
GET      /_sim/retailcrm/requests?since=<seq>   -  (every API request: method, path, form, apiKey, status)
GET      /_sim/retailcrm/stats                  -  (requests, rateLimited, maxPerSecond per kind, statuses)
POST     /_sim/retailcrm/make-call              {userId, phone, externalPhone, code, clientId, module}
                                                 -> what ctihub's makeCallUrl answered {url, status, body}
POST     /_sim/retailcrm/user-status            {userId, status, code, clientId, module}
                                                 -> what ctihub's changeUserStatusUrl answered
GET      /_sim/retailcrm/outgoing               -  (every request the caller side sent, with its answer)
=======  =====================================  ===========================================================
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from simulator.control_api import json_errors, only, read_body, required
from simulator.retailcrm import caller
from simulator.retailcrm.api import world_of

PREFIX = "/_sim/retailcrm"
_json_errors = json_errors()
CONFIG_KEYS = {
    "down": "down", "downStatus": "down_status", "downHtml": "down_html", "delay": "delay", "rateLimit": "rate_limit",
    "telephonyRateLimit": "telephony_rate_limit", "uploadLimit": "upload_limit",
}


def _config_view(world) -> dict[str, Any]:
    return {key: getattr(world.config, attr) for key, attr in CONFIG_KEYS.items()}


@_json_errors
async def reset(request):
    world_of(request).reset()
    return {"reset": True}


@_json_errors
async def state(request):
    return world_of(request).snapshot()


@_json_errors
async def configure(request):
    body = await read_body(request)
    only(body, set(CONFIG_KEYS))
    world = world_of(request)
    world.configure(**{CONFIG_KEYS[k]: v for k, v in body.items()})
    return _config_view(world)


@_json_errors
async def add_api_key(request):
    body = await read_body(request)
    only(body, {"key"})
    world_of(request).add_api_key(str(required(body, "key")))
    return web.json_response({"added": True}, status=201)


@_json_errors
async def add_site(request):
    body = await read_body(request)
    only(body, {"code", "name"})
    return web.json_response(world_of(request).add_site(str(required(body, "code")), body.get("name", "")), status=201)


USER_KEYS = {"id": "user_id", "firstName": "first_name", "lastName": "last_name", "email": "email",
             "status": "status", "online": "online"}


@_json_errors
async def add_user(request):
    body = await read_body(request)
    only(body, set(USER_KEYS))
    required(body, "id")
    user = world_of(request).add_user(**{USER_KEYS[k]: (str(v) if k == "id" else v) for k, v in body.items()})
    return web.json_response(user, status=201)


@_json_errors
async def update_user(request):
    body = await read_body(request)
    only(body, {"status", "online", "firstName", "lastName", "email"})
    return world_of(request).update_user(request.match_info["id"], **body)


@_json_errors
async def add_customer(request):
    body = await read_body(request)
    only(body, {"id", "phones", "firstName", "lastName", "email", "managerId", "site"})
    phones = required(body, "phones")
    if not isinstance(phones, list) or not all(isinstance(p, str) for p in phones):
        raise ValueError("phones must be a list of strings")
    customer = world_of(request).add_customer(
        str(required(body, "id")), phones=phones, first_name=body.get("firstName", ""),
        last_name=body.get("lastName", ""), email=body.get("email", ""),
        manager_id=str(body["managerId"]) if body.get("managerId") is not None else None,
        site=str(body.get("site") or ""),
    )
    return web.json_response(customer, status=201)


@_json_errors
async def modules(request):
    return dict(world_of(request).modules)


@_json_errors
async def events(request):
    return list(world_of(request).events)


@_json_errors
async def calls(request):
    return dict(world_of(request).calls)


@_json_errors
async def uploads(request):
    return list(world_of(request).uploads)


@_json_errors
async def status_changes(request):
    return list(world_of(request).status_changes)


@_json_errors
async def requests_log(request):
    return world_of(request).requests_since(int(request.query.get("since", "0")))


@_json_errors
async def stats(request):
    return world_of(request).stats()


@_json_errors
async def outgoing(request):
    return list(world_of(request).outgoing)


@_json_errors
async def make_call(request):
    body = await read_body(request)
    only(body, {"userId", "phone", "externalPhone", "code", "clientId", "module"})
    return await caller.make_call(
        world_of(request), str(required(body, "userId")), str(required(body, "phone")),
        external_phone=body.get("externalPhone"), code=body.get("code"), client_id=body.get("clientId"),
        module=body.get("module"),
    )


@_json_errors
async def user_status(request):
    body = await read_body(request)
    only(body, {"userId", "status", "code", "clientId", "module"})
    return await caller.change_status(
        world_of(request), str(required(body, "userId")), str(required(body, "status")), code=body.get("code"),
        client_id=body.get("clientId"), module=body.get("module"),
    )


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post(f"{PREFIX}/reset", reset)
    router.add_get(f"{PREFIX}/state", state)
    router.add_patch(f"{PREFIX}/config", configure)
    router.add_post(f"{PREFIX}/api-keys", add_api_key)
    router.add_post(f"{PREFIX}/sites", add_site)
    router.add_post(f"{PREFIX}/users", add_user)
    router.add_patch(f"{PREFIX}/users/{{id}}", update_user)
    router.add_post(f"{PREFIX}/customers", add_customer)
    router.add_get(f"{PREFIX}/modules", modules)
    router.add_get(f"{PREFIX}/events", events)
    router.add_get(f"{PREFIX}/calls", calls)
    router.add_get(f"{PREFIX}/uploads", uploads)
    router.add_get(f"{PREFIX}/status-changes", status_changes)
    router.add_get(f"{PREFIX}/requests", requests_log)
    router.add_get(f"{PREFIX}/stats", stats)
    router.add_get(f"{PREFIX}/outgoing", outgoing)
    router.add_post(f"{PREFIX}/make-call", make_call)
    router.add_post(f"{PREFIX}/user-status", user_status)
