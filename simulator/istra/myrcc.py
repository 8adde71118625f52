"""Istra **myRCC** (enterprise remote call control): extensions, call lines, actions.

Routes under ``/restletrouter`` (X-Application ``myRCC``; one session per
enterprise, logged in as ``<login>|<enterprise>``):

* ``GET v1/rcc/Extension?offset=&length=`` -> ``{"count", "items", "next", "prev"}``;
  ``next`` only when a page follows, ``prev`` only when one precedes; both are
  relative to ``/restletrouter/``, as in the doc.
* ``GET v1/rcc/Extension/:id``; ``POST v1/rcc/Extension/:id/placeCall {"destination"}``
  -> 200 and the new line (state ``prompting``).
* ``GET v1/rcc/CallLine[?listenerName=]`` -> ``{"count", "results"}``; with a listener
  name it also starts monitoring: changed lines are pushed on the websocket as
  snapshots, coalesced to at most one per line every ``push_interval`` (100 ms).
* ``GET v1/rcc/CallLine/:id`` (the "pull" the doc mentions) and
  ``POST v1/rcc/CallLine/:id/:action`` -> 204, or 400 ERR_0 for an action missing
  from the line's ``actions``.

The doc names a line's extension link differently in each place, and so does
this: ``extension`` in ``GET CallLine`` results, ``extensionURI`` in the
placeCall answer, ``uriExtension`` in websocket frames. The placeCall answer also
carries only the keys the doc shows for it. ``talkingTime`` is the epoch time the
line started talking (absent before), ``stateCause`` is always ``causeNormal``
(the only value the doc shows), and dropped snapshots add ``conference``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from simulator.istra import errors, variance
from simulator.istra.calls import ACTION_PARAMS, DROPPED, ActionRefused, BadActionArgument, Line, Transition
from simulator.istra.directory import Extension
from simulator.istra.listeners import parse_json_objects
from simulator.istra.push import Coalescer
from simulator.istra.sessions import Session, authenticated, bean_of, world_of
from simulator.istra.world import IstraWorld

APP = "myRCC"
DEFAULT_PAGE_LENGTH = 50  # the doc's sample pages by 50


def authenticate(world: IstraWorld, user: str, password: str) -> tuple[str, str]:
    """Basic user ``<login>|<enterprise>``: an RCC admin of that enterprise."""
    login, sep, enterprise = user.rpartition("|")
    account = world.directory.users.get(login) if sep else None
    if account is None or account.password != password or not account.myrcc or account.enterprise != enterprise:
        raise errors.authentication_failed()
    return account.login, enterprise


# --- extensions ------------------------------------------------------------------------

def extension_item(extension: Extension) -> dict[str, Any]:
    return {
        "addressNumber": extension.number,
        "restUri": f"v1/rcc/Extension/{extension.id}",
        "displayName": extension.label,
        "department": extension.department,
        "urlPhoto": extension.photo,
        "pstnNumbers": list(extension.pstn_numbers),
    }


@authenticated(APP)
async def list_extensions(request: web.Request, session: Session) -> web.Response:
    offset = _int_param(request, "offset", 0, minimum=0)
    length = _int_param(request, "length", DEFAULT_PAGE_LENGTH, minimum=1)
    extensions = world_of(request).directory.rcc_extensions(session.enterprise)
    page: dict[str, Any] = {
        "count": len(extensions),
        "items": [extension_item(e) for e in extensions[offset:offset + length]],
    }
    if offset + length < len(extensions):
        page["next"] = f"v1/rcc/Extension?offset={offset + length}&length={length}"
    if offset > 0:
        page["prev"] = f"v1/rcc/Extension?offset={max(0, offset - length)}&length={length}"
    return web.json_response(page)


@authenticated(APP)
async def get_extension(request: web.Request, session: Session) -> web.Response:
    return web.json_response(extension_item(_extension(request, session)))


@authenticated(APP)
async def place_call(request: web.Request, session: Session) -> web.Response:
    extension = _extension(request, session)
    if extension.out_of_service:
        raise errors.terminal_out_of_service()
    destination = parse_json_objects(await request.text()).get("destination")
    if not isinstance(destination, str) or not destination.strip():
        raise errors.bad_request("bad destination")
    world = world_of(request)
    line = world.calls.place_call(extension, destination.strip())
    return web.json_response(place_call_view(world, line))


def _extension(request: web.Request, session: Session) -> Extension:
    extension = world_of(request).directory.extension(request.match_info["id"])
    if extension is None or not _visible(extension, session):
        raise errors.bad_request("bad extension ID")
    return extension


def _visible(extension: Extension | None, session: Session) -> bool:
    return extension is not None and extension.enterprise == session.enterprise and extension.myrcc


def _int_param(request: web.Request, name: str, default: int, minimum: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.bad_request(f"bad {name}") from None
    if value < minimum:
        raise errors.bad_request(f"bad {name}")
    return value


# --- call lines ---------------------------------------------------------------------------

def snapshot(world: IstraWorld, line: Line, extension_key: str = "uriExtension") -> dict[str, Any]:
    """A call line's full representation, key order as in the doc."""
    remote = line.remote
    item: dict[str, Any] = {
        "restUri": f"v1/rcc/CallLine/{line.line_id}",
        "actions": world.calls.actions(line),
        "creationTime": str(line.created_ms),
        "displayedExternalNumber": remote.e164 or remote.number,
        "displayedLabel": remote.label,
        "displayedNumber": remote.number,
        "displayedPhoto": remote.photo,
        "isIncoming": line.incoming,
        "isMediaAvailable": False,
        "isPlaying": False,
        "isRecording": False,
        "lastModificationTime": str(line.modified_ms),
        "lineId": line.line_id,
        "state": variance.shown_state(world, line),  # as the doc spells it, unless a test renamed it
        "stateCause": "causeNormal",
    }
    if line.talking_since_ms is not None:
        item["talkingTime"] = str(line.talking_since_ms)
    if line.state == DROPPED:
        item["conference"] = bool(line.parties)
    item[extension_key] = f"v1/rcc/Extension/{line.extension_id}"
    return variance.with_field_values(world, APP, item)


PLACE_CALL_KEYS = (
    "restUri", "actions", "creationTime", "displayedLabel", "displayedNumber", "displayedPhoto",
    "isIncoming", "isMediaAvailable", "isPlaying", "isRecording", "lineId", "state",
)


def place_call_view(world: IstraWorld, line: Line) -> dict[str, Any]:
    full = snapshot(world, line)
    view = {key: full[key] for key in PLACE_CALL_KEYS}
    view["extensionURI"] = f"v1/rcc/Extension/{line.extension_id}"
    return view


@authenticated(APP)
async def list_call_lines(request: web.Request, session: Session) -> web.Response:
    world = world_of(request)
    listener_name = request.query.get("listenerName")
    if listener_name is not None:
        _start_monitoring(world, session, listener_name)
    lines = [line for line in world.calls.live_lines() if _line_visible(world, line, session)]
    if listener_name is not None:
        for line in lines:
            line.report(APP, line.state)
    return web.json_response({"count": len(lines), "results": [snapshot(world, l, "extension") for l in lines]})


@authenticated(APP)
async def get_call_line(request: web.Request, session: Session) -> web.Response:
    world = world_of(request)
    variance.refuse_pull(world, request.match_info["id"])  # a line a test made unpullable
    return web.json_response(snapshot(world, _line(request, session), "extension"))


@authenticated(APP)
async def line_action(request: web.Request, session: Session) -> web.Response:
    world = world_of(request)
    line = _line(request, session)
    action = request.match_info["action"]
    if action not in ACTION_PARAMS:
        raise errors.bad_request(f"unknown action {action}")
    params = parse_json_objects(await request.text())
    try:
        world.calls.act(line, action, params)
    except ActionRefused:
        raise errors.invalid_line_action(line.line_id, action, line.state or "") from None
    except BadActionArgument as exc:
        raise errors.bad_request(str(exc)) from None
    return web.Response(status=204)


def _line(request: web.Request, session: Session) -> Line:
    world = world_of(request)
    line = world.calls.line(request.match_info["id"])
    if line is None or not _line_visible(world, line, session):
        raise errors.bad_request("bad call line ID")
    return line


def _line_visible(world: IstraWorld, line: Line, session: Session) -> bool:
    return _visible(world.directory.extension(line.extension_id), session)


def _start_monitoring(world: IstraWorld, session: Session, listener_name: str) -> None:
    listener = bean_of(world, session, listener_name)
    if listener is None:
        raise errors.bad_request("bad listener name")  # "The listener identifier must be created previously"
    if listener.pusher is None:
        listener.pusher = Coalescer(
            session, listener_name,
            render=lambda line_id: _render_for_push(world, session, line_id),
            interval=lambda: world.config.push_interval,
        )


def _render_for_push(world: IstraWorld, session: Session, line_id: str):
    """The line's snapshot, and what to call once a socket has written it: the state is then told."""
    line = world.calls.line(line_id)
    if line is None or not _line_visible(world, line, session):
        return None
    state = line.state
    return snapshot(world, line), lambda: line.report(APP, state)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/rcc/Extension", list_extensions)
    router.add_get("/v1/rcc/Extension/{id}", get_extension)
    router.add_post("/v1/rcc/Extension/{id}/placeCall", place_call)
    router.add_get("/v1/rcc/CallLine", list_call_lines)
    router.add_get("/v1/rcc/CallLine/{id}", get_call_line)
    router.add_post("/v1/rcc/CallLine/{id}/{action}", line_action)


# --- monitoring -----------------------------------------------------------------------------

def publisher(world: IstraWorld):
    """The CallBook observer: mark the line dirty for every session monitoring it."""

    def publish(transition: Transition) -> None:
        line = transition.line
        changed = [line]
        if transition.before is None or transition.after == DROPPED:
            # A line appearing or going away changes its siblings' actions (transfer, merge).
            changed += [other for other in world.calls.live_lines(line.extension_id) if other is not line]
        for session in world.sessions.of_app(APP):
            if not _line_visible(world, line, session):
                continue
            for listener in session.listeners.values():
                if listener.pusher is not None:
                    for changed_line in changed:
                        listener.pusher.mark(changed_line.line_id)

    return publish
