"""The Istra control API: ``/_sim/istra/...``, JSON in and out, for tests and the demo.

It is a thin HTTP skin over :class:`~simulator.istra.world.IstraWorld`'s public
methods (which Python callers may use directly). Keys are camelCase like the
vendor APIs. Errors: 400 bad input, 404 unknown user/extension/call, 409 a move
the call's state does not allow; body ``{"error": "..."}``.

=======  ==========================================  ===============================================
method   path                                        body
=======  ==========================================  ===============================================
POST     /_sim/istra/reset                           -
GET      /_sim/istra/state                           -
PATCH    /_sim/istra/config                          {sessionTimeout, pushInterval, iptcUp, answerDelay,
                                                      expiryClosesSockets, lockoutAfter, maxPageLength}
                                                      (maxPageLength N: myIstra's pages hold at most N items
                                                      whatever length is asked; 0: no cap) (expiryClosesSockets
                                                      false: an expired session's sockets stay open, answer
                                                      pings, get no frame; lockoutAfter N: a user's Nth wrong
                                                      password in a row suspends it, 0 never)
POST     /_sim/istra/users                           {login, password, enterprise, mycrm, myrcc}
POST     /_sim/istra/users/{login}/unlock            -  (lift a suspension; GET state shows each user's
                                                      ``failures`` and ``locked``)
POST     /_sim/istra/extensions                      {id, number, label, enterprise, owner, department,
                                                      photo, pstnNumbers, deviceModel, outOfService, myrcc}
PATCH    /_sim/istra/extensions/{id}                 same keys, all optional
POST     /_sim/istra/calls/incoming                  {terminalId, from, label, e164, acdId, photo}
POST     /_sim/istra/calls/outgoing                  {terminalId, to, label, e164}
GET      /_sim/istra/calls[/{callId}]                -  (every line ever, dropped ones too: ``history`` is
                                                      its states, ``reportedBy`` {myRCC, myCrm, myIstra}
                                                      the states a client of each app was told of,
                                                      ``reported`` their union, ``historyIds`` {login:
                                                      callHistoryId} of the call-history entries it became)
POST     /_sim/istra/calls/{callId}/answer           -
POST     /_sim/istra/calls/{callId}/hold|unhold      -
POST     /_sim/istra/calls/{callId}/hangup           {cause}  (disconnect, rejected, busy, noAnswer...)
POST     /_sim/istra/calls/script                    {moves: [{at, move, call, terminalId, from|to, cause}]}
                                                     (moves played by the platform at their Unix times ``at``;
                                                      ``call`` a reference bound by its incoming or outgoing
                                                      move; see script.py) -> 202 {scheduled}
GET      /_sim/istra/calls/script                    -  ({pending, played, failed, failures})
POST     /_sim/istra/websockets/drop                 -  (every socket, forgotten sessions' too)
POST     /_sim/istra/websockets/close                {code, reason}  (a clean close: a close frame; sessions stay)
GET      /_sim/istra/websockets                      -  (per socket: its login, frames sent/withheld, pings ignored,
                                                      sessionLive false once its session is forgotten)
POST     /_sim/istra/faults/mute-pings               {listener, mute, silent}  (stop answering pings; silent:
                                                      frames are lost too, a half-open connection)
POST     /_sim/istra/faults/push-frame               {text, repeat, prefix, suffix, listener}  (prefix + text x
                                                      repeat + suffix, raw on the sockets; at most 8 MiB)
GET      /_sim/istra/sessions                        -
POST     /_sim/istra/sessions/expire                 {app, closeSockets}  (both optional: only that
                                                      app's sessions; closeSockets defaults to config
                                                      expiryClosesSockets) -> {expired}
POST     /_sim/istra/sessions/rotate-token           {app}
POST     /_sim/istra/iptc                            {up}  (down: v1/crm/*, v1/rcc/* and myIstra's
                                                      placeCall answer 503 ROUTER_ERR_503)
POST     /_sim/istra/faults/fail-next                {count, status, body, app, path}  (websocket
                                                      upgrades of ws-service/<app> count too; a body
                                                      that is text goes out as an HTML page)
POST     /_sim/istra/faults/redirect-next            {count, status, baseUrl, app, path}
GET      /_sim/istra/requests?since=<seq>            -
DELETE   /_sim/istra/requests                        -
POST     /_sim/istra/enduser/voicemails              {login, from, label, durationSecond, internal, priority,
                                                      timestamp, fields}  (myIstra: leave a voicemail; fields:
                                                      values its item carries instead of ours, e.g.
                                                      {"type": true}, a value the doc does not show)
POST     /_sim/istra/enduser/history                 {login, remoteNumber, remoteLabel, remoteType, isIncoming,
                                                      isMissed, ringDurationSecond, talkDurationSecond, timestamp}
GET      /_sim/istra/enduser/{login}                 -  (voicemails, history, caller-ID, counters)
PATCH    /_sim/istra/enduser/{login}                 {unreadTextMessages, allowedCallerIds, callerId,
                                                      seeMissedCalls}
=======  ==========================================  ===============================================

The ``enduser/...`` routes live in ``myistra.py`` (``add_control_routes``); the vendor-variance
switches (``faults/variance``, ``faults/unpullable-lines``, ``faults/state-names``,
``faults/line-state``) in ``variance.py``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from simulator.control_api import json_errors, only, read_body, required
from simulator.istra.calls import InvalidTransition, Line, Party
from simulator.istra.sessions import Session, world_of
from simulator.istra.world import IstraWorld

PREFIX = "/_sim/istra"

EXTENSION_KEYS = {
    "id": "id", "number": "number", "label": "label", "enterprise": "enterprise", "owner": "owner",
    "department": "department", "photo": "photo", "pstnNumbers": "pstn_numbers",
    "deviceModel": "device_model", "outOfService": "out_of_service", "myrcc": "myrcc",
}
_json_errors = json_errors({InvalidTransition: lambda exc: (409, str(exc))})
CONFIG_KEYS = {"sessionTimeout": "session_timeout", "pushInterval": "push_interval", "iptcUp": "iptc_up",
               "answerDelay": "answer_delay", "expiryClosesSockets": "expiry_closes_sockets",
               "lockoutAfter": "lockout_after", "maxPageLength": "max_page_length"}


def _renamed(body: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    unknown = set(body) - set(mapping)
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    return {mapping[key]: value for key, value in body.items()}


# --- views of the world -------------------------------------------------------------------

def party_view(party: Party) -> dict[str, Any]:
    return {"number": party.number, "label": party.label, "e164": party.e164, "internal": party.internal}


def line_view(world: IstraWorld, line: Line) -> dict[str, Any]:
    return {
        "callId": line.line_id,
        "terminalId": line.extension_id,
        "state": line.state,
        "incoming": line.incoming,
        "remote": party_view(line.remote),
        "acdId": line.acd_id,
        "dropCause": line.drop_cause,
        "ringingTime": line.ringing_ms,
        "talkingTime": line.talking_ms,
        "peerCallId": line.peer_id,
        "destination": line.destination,
        "parties": [party_view(p) for p in line.parties],
        "dtmfs": list(line.dtmfs),
        "actions": world.calls.actions(line),
        "history": list(line.history),
        "reported": list(line.reported),
        "reportedBy": {app: list(states) for app, states in line.reported_by.items()},
        "historyIds": dict(line.history_ids),
        "createdMs": line.created_ms,
        "endedMs": line.ended_ms,
    }


def session_view(session: Session) -> dict[str, Any]:
    return {
        "id": session.id, "app": session.app, "token": session.token, "login": session.login,
        "enterprise": session.enterprise, "sockets": len(session.sockets),
        "listeners": {
            name: {
                "terminalId": listener.terminal_id,
                "boundTerminals": sorted(listener.bound_terminals),
                "monitoring": listener.pusher is not None,
            }
            for name, listener in session.listeners.items()
        },
    }


def extension_view(extension: Any) -> dict[str, Any]:
    return {key: getattr(extension, attr) for key, attr in EXTENSION_KEYS.items()}


# --- handlers ---------------------------------------------------------------------------------

@_json_errors
async def reset(request: web.Request) -> dict[str, Any]:
    world_of(request).reset()
    return {"reset": True}


@_json_errors
async def state(request: web.Request) -> dict[str, Any]:
    world = world_of(request)
    return {
        "config": {key: getattr(world.config, attr) for key, attr in CONFIG_KEYS.items()},
        "users": [vars(u) for u in world.directory.users.values()],
        "extensions": [extension_view(e) for e in world.directory.extensions.values()],
        "sessions": [session_view(s) for s in world.sessions.sessions.values()],
        "calls": [line_view(world, line) for line in world.calls.lines.values()],
    }


@_json_errors
async def configure(request: web.Request) -> dict[str, Any]:
    world = world_of(request)
    world.configure(**_renamed(await read_body(request), CONFIG_KEYS))
    return {key: getattr(world.config, attr) for key, attr in CONFIG_KEYS.items()}


@_json_errors
async def add_user(request: web.Request) -> web.Response:
    body = await read_body(request)
    known = {"login", "password", "enterprise", "mycrm", "myrcc"}
    if set(body) - known:
        raise ValueError(f"unknown keys: {', '.join(sorted(set(body) - known))}")
    user = world_of(request).add_user(str(required(body, "login")), str(required(body, "password")),
                                      **{k: body[k] for k in ("enterprise", "mycrm", "myrcc") if k in body})
    return web.json_response(vars(user), status=201)


@_json_errors
async def unlock_user(request: web.Request) -> dict[str, Any]:
    return vars(world_of(request).unlock_user(request.match_info["login"]))


@_json_errors
async def add_extension(request: web.Request) -> web.Response:
    attrs = _renamed(await read_body(request), EXTENSION_KEYS)
    extension_id, number = str(required(attrs, "id")), str(required(attrs, "number"))
    attrs = {k: v for k, v in attrs.items() if k not in ("id", "number")}
    extension = world_of(request).add_extension(extension_id, number, **attrs)
    return web.json_response(extension_view(extension), status=201)


@_json_errors
async def update_extension(request: web.Request) -> dict[str, Any]:
    attrs = _renamed(await read_body(request), EXTENSION_KEYS)
    return extension_view(world_of(request).update_extension(request.match_info["id"], **attrs))


@_json_errors
async def incoming_call(request: web.Request) -> web.Response:
    body = await read_body(request)
    world = world_of(request)
    line = world.incoming_call(
        str(required(body, "terminalId")), str(required(body, "from")),
        label=body.get("label", ""), e164=body.get("e164", ""), acd_id=body.get("acdId"), photo=body.get("photo", ""),
    )
    return web.json_response(line_view(world, line), status=201)


@_json_errors
async def outgoing_call(request: web.Request) -> web.Response:
    body = await read_body(request)
    world = world_of(request)
    line = world.outgoing_call(
        str(required(body, "terminalId")), str(required(body, "to")),
        label=body.get("label", ""), e164=body.get("e164", ""),
    )
    return web.json_response(line_view(world, line), status=201)


@_json_errors
async def list_calls(request: web.Request) -> list[dict[str, Any]]:
    world = world_of(request)
    return [line_view(world, line) for line in world.calls.lines.values()]


@_json_errors
async def get_call(request: web.Request) -> dict[str, Any]:
    world = world_of(request)
    return line_view(world, world.call(request.match_info["callId"]))


@_json_errors
async def call_move(request: web.Request) -> dict[str, Any]:
    world = world_of(request)
    call_id, move = request.match_info["callId"], request.match_info["move"]
    cause = (await read_body(request)).get("cause", "disconnect") if move == "hangup" else "disconnect"
    return line_view(world, world.move_call(call_id, move, cause))


@_json_errors
async def schedule_script(request: web.Request) -> web.Response:
    world = world_of(request)
    moves = world.script.parse(await read_body(request))
    world.script.check_references(moves)
    return web.json_response({"scheduled": world.script.schedule(world, moves)}, status=202)


@_json_errors
async def script_status(request: web.Request) -> dict[str, Any]:
    return world_of(request).script.status()


@_json_errors
async def drop_websockets(request: web.Request) -> dict[str, Any]:
    return {"dropped": world_of(request).drop_websockets()}


@_json_errors
async def close_websockets(request: web.Request) -> dict[str, Any]:
    body = await read_body(request)
    code, reason = body.get("code", 1000), body.get("reason", "")
    if not isinstance(code, int) or not 1000 <= code <= 4999 or not isinstance(reason, str):
        raise ValueError("code must be a websocket close code (1000-4999) and reason a string")
    return {"closed": world_of(request).close_websockets(code, reason)}


@_json_errors
async def list_websockets(request: web.Request) -> list[dict[str, Any]]:
    return world_of(request).socket_stats()


@_json_errors
async def mute_pings(request: web.Request) -> dict[str, Any]:
    body = await read_body(request)
    mute, silent = body.get("mute", True), body.get("silent", False)
    if not isinstance(mute, bool) or not isinstance(silent, bool):
        raise ValueError("mute and silent must be true or false")
    return {"sockets": world_of(request).mute_pings(body.get("listener"), mute=mute, silent=silent)}


MAX_PUSHED_FRAME = 8 * 1024 * 1024


@_json_errors
async def push_frame(request: web.Request) -> dict[str, Any]:
    body = await read_body(request)
    text, repeat = required(body, "text"), body.get("repeat", 1)
    prefix, suffix = body.get("prefix", ""), body.get("suffix", "")
    if not all(isinstance(part, str) for part in (text, prefix, suffix)) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError("text, prefix and suffix must be strings and repeat a positive integer")
    if len(prefix) + len(text) * repeat + len(suffix) > MAX_PUSHED_FRAME:
        raise ValueError(f"a pushed frame is at most {MAX_PUSHED_FRAME} characters")
    return {"sockets": world_of(request).push_raw(prefix + text * repeat + suffix, body.get("listener"))}


@_json_errors
async def list_sessions(request: web.Request) -> list[dict[str, Any]]:
    return [session_view(s) for s in world_of(request).sessions.sessions.values()]


@_json_errors
async def expire_sessions(request: web.Request) -> dict[str, Any]:
    body = await read_body(request)
    only(body, {"app", "closeSockets"})
    return {"expired": world_of(request).expire_sessions(body.get("app"), body.get("closeSockets"))}


@_json_errors
async def rotate_tokens(request: web.Request) -> dict[str, Any]:
    return {"sessions": world_of(request).rotate_tokens((await read_body(request)).get("app"))}


@_json_errors
async def set_iptc(request: web.Request) -> dict[str, Any]:
    up = (await read_body(request)).get("up")
    if not isinstance(up, bool):
        raise ValueError('body must be {"up": true|false}')
    world_of(request).set_iptc(up)
    return {"up": up}


@_json_errors
async def fail_next(request: web.Request) -> dict[str, Any]:
    body = await read_body(request)
    fault = world_of(request).fail_next(
        int(body.get("count", 1)), int(body.get("status", 503)), body.get("body"), body.get("app"), body.get("path"),
    )
    return {"count": fault.remaining, "status": fault.status, "body": fault.body}


@_json_errors
async def redirect_next(request: web.Request) -> dict[str, Any]:
    body = await read_body(request)
    status = int(body.get("status", 302))
    if status not in (301, 302, 303, 307, 308):
        raise ValueError("status must be a redirect status")
    redirect = world_of(request).redirect_next(
        int(body.get("count", 1)), status, body.get("baseUrl"), body.get("app"), body.get("path"),
    )
    return {"count": redirect.remaining, "status": redirect.status, "baseUrl": redirect.base_url}


@_json_errors
async def list_requests(request: web.Request) -> list[dict[str, Any]]:
    return world_of(request).requests_received(int(request.query.get("since", "0")))


@_json_errors
async def clear_requests(request: web.Request) -> dict[str, Any]:
    world_of(request).clear_requests()
    return {"cleared": True}


@_json_errors
async def frame_log(request: web.Request) -> list[dict[str, Any]]:
    """GET: the frames sent since ``?since=`` (seq), each with the time it left (``time.time()``)."""
    return world_of(request).frames.since(int(request.query.get("since", "0")))


@_json_errors
async def configure_frame_log(request: web.Request) -> dict[str, Any]:
    """POST ``{"enabled": true}``: start timing every websocket frame sent (false stops and empties it)."""
    frames = world_of(request).frames
    frames.enabled = bool((await read_body(request)).get("enabled", True))
    if not frames.enabled:
        frames.clear()
    return {"enabled": frames.enabled}


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post(f"{PREFIX}/reset", reset)
    router.add_get(f"{PREFIX}/state", state)
    router.add_patch(f"{PREFIX}/config", configure)
    router.add_post(f"{PREFIX}/users", add_user)
    router.add_post(f"{PREFIX}/users/{{login}}/unlock", unlock_user)
    router.add_post(f"{PREFIX}/extensions", add_extension)
    router.add_patch(f"{PREFIX}/extensions/{{id}}", update_extension)
    router.add_post(f"{PREFIX}/calls/incoming", incoming_call)
    router.add_post(f"{PREFIX}/calls/outgoing", outgoing_call)
    router.add_post(f"{PREFIX}/calls/script", schedule_script)
    router.add_get(f"{PREFIX}/calls/script", script_status)
    router.add_get(f"{PREFIX}/calls", list_calls)
    router.add_get(f"{PREFIX}/calls/{{callId}}", get_call)
    router.add_post(f"{PREFIX}/calls/{{callId}}/{{move}}", call_move)
    router.add_post(f"{PREFIX}/websockets/drop", drop_websockets)
    router.add_post(f"{PREFIX}/websockets/close", close_websockets)
    router.add_get(f"{PREFIX}/websockets", list_websockets)
    router.add_post(f"{PREFIX}/faults/mute-pings", mute_pings)
    router.add_post(f"{PREFIX}/faults/push-frame", push_frame)
    router.add_get(f"{PREFIX}/sessions", list_sessions)
    router.add_post(f"{PREFIX}/sessions/expire", expire_sessions)
    router.add_post(f"{PREFIX}/sessions/rotate-token", rotate_tokens)
    router.add_post(f"{PREFIX}/iptc", set_iptc)
    router.add_post(f"{PREFIX}/faults/fail-next", fail_next)
    router.add_post(f"{PREFIX}/faults/redirect-next", redirect_next)
    router.add_get(f"{PREFIX}/requests", list_requests)
    router.add_delete(f"{PREFIX}/requests", clear_requests)
    router.add_get(f"{PREFIX}/frame-log", frame_log)
    router.add_post(f"{PREFIX}/frame-log", configure_frame_log)
