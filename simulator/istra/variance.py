"""Where a real Istra may depart from our reading of the specs: switches a test turns on.

Our simulator and our tests share one reading of the specs, so where a spec is
silent the tests would only confirm our own guess. These switches make the
simulator send what the specs leave open. All are off by default (and in the demo);
``reset`` turns them off.

* **Unpullable lines** (myRCC): ``GET v1/rcc/CallLine/<id>`` answers a chosen
  error status (404, 500, 503...) for chosen line ids, in the router's
  ``{"code": "ROUTER_ERR_<status>", "message"}`` shape, while every other request
  works (404 in the router's not-found shape: a PBX without this GET). A line the
  PBX forgot still answers 400 ERR_0 "bad call line ID".
* **State names** (myRCC): the doc shows only ``prompting``, ``talking``, ``held``
  and ``dropped``. A world-wide map renames states in every snapshot (e.g.
  ``{"ringing": "alerting"}``: how this PBX spells a ringing line), and one line can
  be shown in a state name of the test's choosing (pushed at once, as a new
  snapshot, and shown until the line's state changes).

* **Field values** (myCrm, myRCC): the docs show durations and times as strings of digits,
  flags as JSON booleans, links and numbers as text. For one app, chosen fields of every
  event item (myCrm) or call line (myRCC) carry the test's value instead of ours (any
  JSON: ``"-1"``, ``"262.0"``, ``"TRUE"``, ``null``, a list...), wherever the item has
  that field; nothing is added to an item that has no such field.

* **Bean scope** (all three apps): the docs never say whose a ``v1/service/EventListener/bean``
  is. ``session`` (the default): its creating session's, deleted with it. ``user``: the user's,
  shared by all the user's sessions (each binds it on its own), deleted for all of them by any
  one, and outliving its session (``listeners.py``). The variance view lists the user beans.

Control routes (JSON; errors as in ``control.py``):

=======  ======================================  =============================================
method   path                                    body
=======  ======================================  =============================================
GET      /_sim/istra/faults/variance             -  (the switches as they are)
POST     /_sim/istra/faults/unpullable-lines     {lines: [lineId...], status}  (status null or 0:
                                                 pullable again) -> {lineId: status}
POST     /_sim/istra/faults/state-names          {names: {state: name}}  (replaces the map; {} is off)
POST     /_sim/istra/faults/line-state           {callId, state}  (state null: the real name again)
POST     /_sim/istra/faults/field-values     {app, fields: {field: value}}  (app "myCrm" or "myRCC";
                                                 replaces that app's map; {} is off) -> the map
POST     /_sim/istra/faults/bean-scope           {scope}  ("session" or "user"; to user: the beans the
                                                 sessions hold become their users'; to session: the
                                                 user beans are forgotten) -> {scope}
=======  ======================================  =============================================

Python callers use the functions of the same names with the world as first argument.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from simulator.control_api import json_errors, only, read_body, required
from simulator.istra import errors
from simulator.istra.calls import Line
from simulator.istra.sessions import user_key, world_of
from simulator.istra.world import IstraWorld, on_loop

PREFIX = "/_sim/istra/faults"
MAX_NAME = 200


# --- what the views ask ------------------------------------------------------------------------

def refuse_pull(world: IstraWorld, line_id: str) -> None:
    """Raise the error chosen for pulling ``line_id``, if one is."""
    status = world.variance.unpullable.get(line_id)
    if status is None:
        return
    if status == 404:
        raise errors.not_found(f"v1/rcc/CallLine/{line_id}")
    raise errors.router_error(status, f"ROUTER_ERR_{status}", f"call line {line_id} cannot be read now")


def shown_state(world: IstraWorld, line: Line) -> str:
    """The state name a snapshot of ``line`` shows."""
    state = line.state or ""
    named = world.variance.line_state_names.get(line.line_id)
    if named is not None and named[0] == state:
        return named[1]
    return world.variance.state_names.get(state, state)


def with_field_values(world: IstraWorld, app: str, item: dict[str, Any]) -> dict[str, Any]:
    """``item`` as ``app`` sends it: the fields a test chose carry its values (only those the item has)."""
    values = world.variance.field_values.get(app)
    if not values:
        return item
    return {key: values.get(key, value) if key in values else value for key, value in item.items()}


# --- switches ------------------------------------------------------------------------------------

@on_loop
def unpullable_lines(world: IstraWorld, line_ids: list[str], status: int | None = 500) -> dict[str, int]:
    """Pulling these lines answers ``status`` (None or 0: they are pullable again)."""
    if not isinstance(line_ids, list) or not all(isinstance(i, str) and i for i in line_ids):
        raise ValueError("lines must be a list of call line ids")
    if status is not None and (not isinstance(status, int) or isinstance(status, bool)
                               or not (status == 0 or 400 <= status <= 599)):
        raise ValueError("status must be an HTTP error status (400-599), or 0/null to undo")
    for line_id in line_ids:
        if status:
            world.variance.unpullable[line_id] = status
        else:
            world.variance.unpullable.pop(line_id, None)
    return dict(world.variance.unpullable)


@on_loop
def state_names(world: IstraWorld, names: dict[str, str]) -> dict[str, str]:
    """Snapshots show state ``s`` as ``names[s]`` from now on (``{}``: as the doc spells them)."""
    if not isinstance(names, dict) or not all(_a_name(k) and _a_name(v) for k, v in names.items()):
        raise ValueError("names must map state names to state names")
    world.variance.state_names = dict(names)
    return dict(names)


@on_loop
def line_state(world: IstraWorld, call_id: str, name: str | None) -> dict[str, Any]:
    """Show line ``call_id`` in state ``name`` until its state changes, and push that snapshot now."""
    line = world.call(call_id)
    if name is None:
        world.variance.line_state_names.pop(line.line_id, None)
    elif not _a_name(name):
        raise ValueError(f"state must be a text of 1 to {MAX_NAME} characters, or null")
    else:
        world.variance.line_state_names[line.line_id] = (line.state or "", name)
    # A new snapshot (lastModificationTime moves on) for every myRCC client monitoring the line;
    # a change that keeps the state is nothing to myCrm or to the call history.
    world.calls._touch(line)  # noqa: SLF001 - the CallBook's own "changed, same state" notice
    return {"callId": line.line_id, "state": line.state, "shown": shown_state(world, line)}


FIELD_VALUE_APPS = ("myCrm", "myRCC")


@on_loop
def field_values(world: IstraWorld, app: str, fields: dict[str, Any]) -> dict[str, Any]:
    """``app``'s items carry these values for these fields from now on (``{}``: our own values again)."""
    if app not in FIELD_VALUE_APPS:
        raise ValueError(f"app must be one of {', '.join(FIELD_VALUE_APPS)}")
    if not isinstance(fields, dict) or not all(_a_name(key) for key in fields):
        raise ValueError("fields must map field names to values")
    if fields:
        world.variance.field_values[app] = dict(fields)
    else:
        world.variance.field_values.pop(app, None)
    return dict(fields)


BEAN_SCOPES = ("session", "user")


@on_loop
def bean_scope(world: IstraWorld, scope: str) -> dict[str, str]:
    """Listener beans are their session's (``session``) or shared by the user's sessions (``user``)."""
    if scope not in BEAN_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(BEAN_SCOPES)}")
    if scope != world.variance.bean_scope:
        world.variance.bean_scope = scope
        world.variance.user_beans.clear()
        if scope == "user":  # the beans the sessions hold now become their users'
            for session in [*world.sessions.sessions.values(), *world.sessions.lingering.values()]:
                world.variance.user_beans.setdefault(user_key(session), set()).update(session.listeners)
    return {"scope": scope}


def view(world: IstraWorld) -> dict[str, Any]:
    variance = world.variance
    return {
        "beanScope": variance.bean_scope,
        "userBeans": {f"{app}:{login}@{enterprise}": sorted(names)
                      for (app, login, enterprise), names in variance.user_beans.items() if names},
        "unpullableLines": dict(variance.unpullable),
        "stateNames": dict(variance.state_names),
        "fieldValues": {app: dict(values) for app, values in variance.field_values.items()},
        "lineStates": {line_id: {"state": state, "shown": name}
                       for line_id, (state, name) in variance.line_state_names.items()},
    }


def _a_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


# --- control routes --------------------------------------------------------------------------------

@json_errors()
async def get_variance(request: web.Request) -> dict[str, Any]:
    return view(world_of(request))


@json_errors()
async def post_unpullable_lines(request: web.Request) -> dict[str, int]:
    body = await read_body(request)
    only(body, {"lines", "status"})
    return unpullable_lines(world_of(request), required(body, "lines"), body.get("status", 500))


@json_errors()
async def post_state_names(request: web.Request) -> dict[str, str]:
    body = await read_body(request)
    only(body, {"names"})
    return state_names(world_of(request), body.get("names", {}))


@json_errors()
async def post_line_state(request: web.Request) -> dict[str, Any]:
    body = await read_body(request)
    only(body, {"callId", "state"})
    return line_state(world_of(request), str(required(body, "callId")), body.get("state"))


@json_errors()
async def post_field_values(request: web.Request) -> dict[str, Any]:
    body = await read_body(request)
    only(body, {"app", "fields"})
    return field_values(world_of(request), required(body, "app"), body.get("fields", {}))


@json_errors()
async def post_bean_scope(request: web.Request) -> dict[str, str]:
    body = await read_body(request)
    only(body, {"scope"})
    return bean_scope(world_of(request), required(body, "scope"))


def add_control_routes(app: web.Application) -> None:
    router = app.router
    router.add_get(f"{PREFIX}/variance", get_variance)
    router.add_post(f"{PREFIX}/unpullable-lines", post_unpullable_lines)
    router.add_post(f"{PREFIX}/state-names", post_state_names)
    router.add_post(f"{PREFIX}/line-state", post_line_state)
    router.add_post(f"{PREFIX}/field-values", post_field_values)
    router.add_post(f"{PREFIX}/bean-scope", post_bean_scope)
