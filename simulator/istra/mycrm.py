"""Istra **myCrm** (end user, per terminal): terminals, listen, call events, PlaceCall.

Routes under ``/restletrouter`` (X-Application ``myCrm``):

* ``GET v1/crm/GetTerminals`` -> ``[{"deviceModel": ..., "terminalId": ...}]``
* ``GET v1/crm/CallLine?listenerName=..&terminalId=..`` binds the listener to the
  session's websocket: from then on the terminal's call events are pushed there.
* ``GET v1/crm/PlaceCall?terminalId=..&destination=..`` (200, empty body; 400 ERR_0
  for a terminal that is not the user's, 512 ERR_100 when it is out of service).

Events (``callAlerting``, ``callRinging``, ``callTalking``, ``callHeld``,
``callDropped``) carry the fields the doc lists, keys sorted as in its examples,
durations in milliseconds *as strings*. Choices where the doc is silent:
``acdId`` only appears for calls that came through an ACD; a click-to-call's
``prompting`` phase (the user's own device being rung) has no event, the call
shows up with ``callAlerting`` once the destination is alerted; ``callHeld``
carries only ``callId`` (and ``event``), as listed.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from simulator.istra import errors, variance
from simulator.istra.calls import DROPPED, HELD, RINGING, TALKING, Line, Transition
from simulator.istra.push import once, send_to_session
from simulator.istra.sessions import Session, authenticated, bean_of, split_enduser, world_of
from simulator.istra.world import IstraWorld

APP = "myCrm"


def authenticate(world: IstraWorld, user: str, password: str) -> tuple[str, str]:
    """Basic user ``ENDUSER:<login>``; a user without CRM rights gets MYCRM_ERR_403."""
    credentials = split_enduser(user, password)
    if credentials is None:
        raise errors.authentication_failed()
    login, real_password = credentials
    account = world.directory.users.get(login)
    if account is None or account.password != real_password:
        raise errors.authentication_failed()
    if not account.mycrm:
        raise errors.mycrm_not_allowed()
    return account.login, account.enterprise


# --- routes ---------------------------------------------------------------------------

@authenticated(APP)
async def get_terminals(request: web.Request, session: Session) -> web.Response:
    terminals = world_of(request).directory.terminals_of(session.login)
    return web.json_response([{"deviceModel": t.device_model, "terminalId": t.id} for t in terminals])


@authenticated(APP)
async def listen(request: web.Request, session: Session) -> web.Response:
    listener = bean_of(world_of(request), session, request.query.get("listenerName", ""))
    if listener is None:
        raise errors.bad_request("bad listener name")
    terminal_id = _own_terminal(request, session).id
    listener.bound_terminals.add(terminal_id)
    return web.Response(status=200)


@authenticated(APP)
async def place_call(request: web.Request, session: Session) -> web.Response:
    terminal = _own_terminal(request, session)
    if terminal.out_of_service:
        raise errors.terminal_out_of_service()
    destination = request.query.get("destination", "").strip()
    if not destination:
        raise errors.bad_request("bad destination")
    world_of(request).calls.place_call(terminal, destination)
    return web.Response(status=200)


def _own_terminal(request: web.Request, session: Session):
    terminal_id = request.query.get("terminalId", "")
    terminal = world_of(request).directory.extension(terminal_id)
    if terminal is None or terminal.owner != session.login:
        raise errors.bad_request("bad terminal ID")
    return terminal


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/crm/GetTerminals", get_terminals)
    router.add_get("/v1/crm/CallLine", listen)
    router.add_get("/v1/crm/PlaceCall", place_call)


# --- events -----------------------------------------------------------------------------

def event_for(transition: Transition) -> dict[str, Any] | None:
    """The myCrm event a transition produces, if any."""
    line, before, after = transition.line, transition.before, transition.after
    if after == RINGING and before != RINGING:
        return _call_event("callRinging" if line.incoming else "callAlerting", line)
    if after == TALKING and transition.cause:
        return _call_event("callTalking", line, talkCause=transition.cause)
    if after == HELD and before != HELD:
        return {"callId": line.line_id, "event": "callHeld"}
    if after == DROPPED and before != DROPPED:
        return _call_event(
            "callDropped", line,
            dropCause=line.drop_cause or "disconnect",
            ringingTime=str(line.ringing_ms),
            talkingTime=str(line.talking_ms),
        )
    return None


def _call_event(name: str, line: Line, **extra: str) -> dict[str, Any]:
    remote = line.remote
    item: dict[str, Any] = {
        "callId": line.line_id,
        "displayLabel": remote.label,
        "displayNumber": remote.number,
        "displayNumberE164": remote.e164 or remote.number,
        "event": name,
        "incoming": line.incoming,
        "type": "internal" if remote.internal else "external",
        **extra,
    }
    if line.acd_id:
        item["acdId"] = line.acd_id
    return dict(sorted(item.items()))


def publisher(world: IstraWorld):
    """The CallBook observer that pushes events to the live sessions listening to the terminal.

    A session that has expired gets nothing, even if its websocket was left open. The line's
    ``reported_by["myCrm"]`` records the state once the event has been written to a socket
    (not withheld by a silent one): a call that rang and ended while no socket was bound is one no myCrm
    client could know of.
    """

    def publish(transition: Transition) -> None:
        event = event_for(transition)
        if event is None:
            return
        event = variance.with_field_values(world, APP, event)
        line, state = transition.line, transition.line.state
        # Told once, whichever session's socket writes the frame first (send_to_session: once per session).
        told = once(lambda: line.report(APP, state))
        for session in world.sessions.of_app(APP):
            for listener in list(session.listeners.values()):
                if line.extension_id in listener.bound_terminals:
                    send_to_session(session, listener.name, [event], told)

    return publish
