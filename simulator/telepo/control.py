"""The Telepo control API: ``/_sim/telepo/...``, JSON in and out, for tests and the demo.

A thin HTTP skin over :class:`~simulator.telepo.world.TelepoWorld`. Errors: 400
bad input, 404 unknown user/call, 409 a move the call's state does not allow;
body ``{"error": "..."}``.

=======  ======================================  ===============================================
method   path                                    body
=======  ======================================  ===============================================
POST     /_sim/telepo/reset                      -
POST     /_sim/telepo/tickets                    {ticket, domain, scopes}
DELETE   /_sim/telepo/tickets/{ticket}           -
POST     /_sim/telepo/users                      {userId, domain, email, number, displayName,
                                                  devices: {deviceId: deviceType}, ctiLicence}
PUT      /_sim/telepo/webhook-url                {domain, url}  (the CRM connector URL)
POST     /_sim/telepo/calls/incoming             {userId, from, displayName, callerUserId, callerEmail,
                                                  ringDevices: [deviceId...], dialled}  (each device rings
                                                  as a branch of its own; without it, one branch as before;
                                                  dialled: the number first called, in the snapshot's
                                                  historyInfo.initialParty)
POST     /_sim/telepo/calls/outgoing             {userId, to, deviceId, displayName}
GET      /_sim/telepo/calls[/{callId}]           -  (with its branches and takenBy)
POST     /_sim/telepo/calls/{callId}/answer      {deviceId}  (the ringing party picks up; on a forked
                                                  call the other devices end ANSWERED_ELSEWHERE)
POST     /_sim/telepo/calls/{callId}/hangup      {reason}  (CANCELLED, ANSWERED_ELSEWHERE, HANGUP, REJECTED)
POST     /_sim/telepo/calls/{callId}/decline     {deviceId}  (that device's branch ends REJECTED, the
                                                  others ring on; the call ends with its last branch)
POST     /_sim/telepo/calls/{callId}/divert      {deviceId}  (a VOICEMAIL or QUEUE device takes the
                                                  ringing call: CONFIRMED there, not the user answering)
PUT      /_sim/telepo/calls/{callId}/status-name {name}  (the snapshot shows this status word; null clears)
POST     /_sim/telepo/webhooks/hold              -  (queue messages instead of sending them)
POST     /_sim/telepo/webhooks/release           {order: fifo|reverse|shuffle, seed}
POST     /_sim/telepo/webhooks/pace              {seconds}  (a pause after each delivery: lagging webhooks)
POST     /_sim/telepo/actions/mismatch-status    {status}  (the 4xx a stale stateToken gets; 409 by default)
POST     /_sim/telepo/webhooks/stamp-style       {style}  (how delivered messages write their timestamp:
                                                  spec, zulu, colon-offset, no-offset, space, nanoseconds,
                                                  epoch-ms, epoch-s, unreadable)
POST     /_sim/telepo/webhooks/drop-next         {count, state}
POST     /_sim/telepo/webhooks/duplicate-next    {count, state}
POST     /_sim/telepo/webhooks/rename-next       {count, state, to, field}  (the next messages, of state if
                                                  given, carry ``field`` (state, termination-reason,
                                                  direction or device_type; state unless given) as ``to``)
POST     /_sim/telepo/actions/fail-next          {action, description, count}  (the next actions, of that
                                                  path name (hold, make...) if given, answer 200 with
                                                  "event": "FAILED" and eventDescription, doing nothing;
                                                  description defaults to the spec's sample)
POST     /_sim/telepo/webhooks/resend            {callId, seqNum, shiftSeconds}  (timestamp moved by that)
GET      /_sim/telepo/webhooks                   -  (every message generated, in order)
GET      /_sim/telepo/webhooks/deliveries        -  (every POST made, with ctihub's status)
GET      /_sim/telepo/requests?since=<seq>       -
=======  ======================================  ===============================================
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from simulator.control_api import json_errors, only, read_body, required
from simulator.telepo.api import world_of
from simulator.telepo.world import TelepoError

PREFIX = "/_sim/telepo"
_json_errors = json_errors({TelepoError: lambda exc: (exc.status, exc.message)})


async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    body = await read_body(request)
    only(body, allowed)
    return body




@_json_errors
async def reset(request):
    world_of(request).reset()
    return {"reset": True}


@_json_errors
async def add_ticket(request):
    body = await _body(request, {"ticket", "domain", "scopes"})
    ticket = world_of(request).add_ticket(str(required(body, "ticket")), str(required(body, "domain")),
                                          tuple(body.get("scopes") or ("CALL_CONTROL",)))
    return {"ticket": ticket.ticket, "domain": ticket.domain, "scopes": list(ticket.scopes)}


@_json_errors
async def revoke_ticket(request):
    world_of(request).revoke_ticket(request.match_info["ticket"])
    return {"revoked": True}


@_json_errors
async def add_user(request):
    body = await _body(request, {"userId", "domain", "email", "number", "displayName", "devices", "ctiLicence"})
    user = world_of(request).add_user(
        str(required(body, "userId")), str(required(body, "domain")), email=body.get("email", ""),
        number=body.get("number", ""), display_name=body.get("displayName", ""), devices=body.get("devices"),
        cti_licence=bool(body.get("ctiLicence", True)),
    )
    return {"userId": user.user_id, "domain": user.domain, "devices": user.devices}


@_json_errors
async def set_webhook_url(request):
    body = await _body(request, {"domain", "url"})
    return {"url": world_of(request).set_webhook(str(required(body, "domain")), str(required(body, "url")))}


@_json_errors
async def incoming(request):
    body = await _body(request, {"userId", "from", "displayName", "callerUserId", "callerEmail", "ringDevices",
                                 "dialled"})
    world = world_of(request)
    ring_devices = body.get("ringDevices")
    if ring_devices is not None and not (isinstance(ring_devices, list)
                                         and all(isinstance(d, str) for d in ring_devices)):
        raise ValueError("ringDevices is a list of deviceIds")
    call = world.incoming_call(str(required(body, "userId")), str(required(body, "from")),
                               display_name=body.get("displayName", ""), caller_user=body.get("callerUserId", ""),
                               caller_email=body.get("callerEmail", ""), ring_devices=ring_devices,
                               dialled=str(body.get("dialled") or ""))
    return world.call_view(call)


@_json_errors
async def outgoing(request):
    body = await _body(request, {"userId", "to", "deviceId", "displayName"})
    world = world_of(request)
    call = world.outgoing_call(str(required(body, "userId")), str(required(body, "to")),
                               device_id=body.get("deviceId"), display_name=body.get("displayName", ""))
    return world.call_view(call)


@_json_errors
async def calls(request):
    world = world_of(request)
    return [world.call_view(c) for c in list(world.calls.values())]


@_json_errors
async def one_call(request):
    world = world_of(request)
    return world.call_view(world.call(request.match_info["callId"]))


@_json_errors
async def answer(request):
    body = await _body(request, {"deviceId"})
    world = world_of(request)
    return world.call_view(world.answer(request.match_info["callId"], body.get("deviceId")))


@_json_errors
async def hangup(request):
    body = await _body(request, {"reason"})
    world = world_of(request)
    return world.call_view(world.hangup(request.match_info["callId"], body.get("reason")))


@_json_errors
async def decline(request):
    body = await _body(request, {"deviceId"})
    world = world_of(request)
    return world.call_view(world.decline(request.match_info["callId"], str(required(body, "deviceId"))))


@_json_errors
async def divert(request):
    body = await _body(request, {"deviceId"})
    world = world_of(request)
    return world.call_view(world.divert(request.match_info["callId"], str(required(body, "deviceId"))))


@_json_errors
async def status_name(request):
    body = await _body(request, {"name"})
    world = world_of(request)
    name = body.get("name")
    return world.call_view(world.set_status_name(request.match_info["callId"], None if name is None else str(name)))


@_json_errors
async def fail_next(request):
    body = await _body(request, {"action", "description", "count"})
    kwargs = {"description": str(body["description"])} if body.get("description") else {}
    rule = world_of(request).fail_next(body.get("action"), count=int(body.get("count", 1)), **kwargs)
    return {"action": rule.action, "description": rule.description, "remaining": rule.remaining}


@_json_errors
async def rename_next(request):
    body = await _body(request, {"count", "state", "to", "field"})
    rule = world_of(request).add_rule("rename", int(body.get("count", 1)), body.get("state"),
                                      to=required(body, "to"), field=str(body.get("field", "state")))
    return {"kind": rule.kind, "remaining": rule.remaining, "state": rule.state, "to": rule.to, "field": rule.key}


@_json_errors
async def hold_webhooks(request):
    world_of(request).hold_webhooks()
    return {"held": True}


@_json_errors
async def release_webhooks(request):
    body = await _body(request, {"order", "seed"})
    return {"released": world_of(request).release_webhooks(body.get("order", "fifo"), body.get("seed"))}


@_json_errors
async def pace_webhooks(request):
    body = await _body(request, {"seconds"})
    world_of(request).set_pace(float(required(body, "seconds")))
    return {"pace": world_of(request).pace}


@_json_errors
async def mismatch_status(request):
    body = await _body(request, {"status"})
    world_of(request).set_mismatch_status(required(body, "status"))
    return {"status": world_of(request).mismatch_status}


@_json_errors
async def stamp_style(request):
    body = await _body(request, {"style"})
    world_of(request).set_stamp_style(required(body, "style"))
    return {"style": world_of(request).stamp_style}


def _rule(kind: str):
    @_json_errors
    async def handler(request):
        body = await _body(request, {"count", "state"})
        rule = world_of(request).add_rule(kind, int(body.get("count", 1)), body.get("state"))
        return {"kind": rule.kind, "remaining": rule.remaining, "state": rule.state}

    return handler


@_json_errors
async def resend(request):
    body = await _body(request, {"callId", "seqNum", "shiftSeconds"})
    return world_of(request).resend(str(required(body, "callId")), int(required(body, "seqNum")),
                                    float(body.get("shiftSeconds") or 0))


@_json_errors
async def messages(request):
    return list(world_of(request).sent)


@_json_errors
async def deliveries(request):
    return list(world_of(request).deliveries)


@_json_errors
async def requests_log(request):
    return world_of(request).requests_since(int(request.query.get("since", "0")))


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post(f"{PREFIX}/reset", reset)
    router.add_post(f"{PREFIX}/tickets", add_ticket)
    router.add_delete(f"{PREFIX}/tickets/{{ticket}}", revoke_ticket)
    router.add_post(f"{PREFIX}/users", add_user)
    router.add_put(f"{PREFIX}/webhook-url", set_webhook_url)
    router.add_post(f"{PREFIX}/calls/incoming", incoming)
    router.add_post(f"{PREFIX}/calls/outgoing", outgoing)
    router.add_get(f"{PREFIX}/calls", calls)
    router.add_get(f"{PREFIX}/calls/{{callId}}", one_call)
    router.add_post(f"{PREFIX}/calls/{{callId}}/answer", answer)
    router.add_post(f"{PREFIX}/calls/{{callId}}/hangup", hangup)
    router.add_post(f"{PREFIX}/calls/{{callId}}/decline", decline)
    router.add_post(f"{PREFIX}/calls/{{callId}}/divert", divert)
    router.add_put(f"{PREFIX}/calls/{{callId}}/status-name", status_name)
    router.add_post(f"{PREFIX}/actions/fail-next", fail_next)
    router.add_post(f"{PREFIX}/webhooks/hold", hold_webhooks)
    router.add_post(f"{PREFIX}/webhooks/release", release_webhooks)
    router.add_post(f"{PREFIX}/webhooks/pace", pace_webhooks)
    router.add_post(f"{PREFIX}/webhooks/stamp-style", stamp_style)
    router.add_post(f"{PREFIX}/actions/mismatch-status", mismatch_status)
    router.add_post(f"{PREFIX}/webhooks/drop-next", _rule("drop"))
    router.add_post(f"{PREFIX}/webhooks/duplicate-next", _rule("duplicate"))
    router.add_post(f"{PREFIX}/webhooks/rename-next", rename_next)
    router.add_post(f"{PREFIX}/webhooks/resend", resend)
    router.add_get(f"{PREFIX}/webhooks", messages)
    router.add_get(f"{PREFIX}/webhooks/deliveries", deliveries)
    router.add_get(f"{PREFIX}/requests", requests_log)
