"""Centile Istra, simulated: the ``/restletrouter`` with myCrm and myRCC.

``register(app)`` mounts it on the simulator's aiohttp application:

* ``/restletrouter/...``: one sub-application for every Istra application, told
  apart by ``X-Application`` (``myCrm``, ``myRCC``, ``myIstra``: each brings an
  authenticator for Login and its routes);
* ``/_sim/istra/...``: the control API (``control.py``).

Modules: ``sessions`` (Login, cookie, token, expiry), ``router`` (request log,
armed faults and redirects, JSON errors, gzip), ``listeners`` (EventListener
bean), ``push`` (websocket, coalescing), ``calls`` (call lines and their state
machine, shared by both views), ``mycrm`` and ``myrcc`` (the two views),
``world`` (all the state), ``control``.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from simulator.istra import control, listeners, mycrm, myistra, myrcc, push, sessions
from simulator.istra.router import restletrouter_middleware
from simulator.istra.world import IstraWorld
from simulator.keys import STATE

# Seconds between checks for sessions expired by inactivity: a session is expired (401) from the moment it is due,
# and its sockets close (or it is forgotten, see IstraConfig.expiry_closes_sockets) at most this much later.
SWEEP_EVERY = 0.25

__all__ = ["IstraWorld", "register"]


def register(app: web.Application) -> None:
    """Mount the Istra router and its control API on ``app`` (``app[STATE].istra`` is the world)."""
    world: IstraWorld = app[STATE].istra
    world.calls.observe("mycrm", mycrm.publisher(world))
    world.calls.observe("myrcc", myrcc.publisher(world))
    world.calls.observe("myistra", myistra.history_recorder(world))

    router_app = web.Application(middlewares=[restletrouter_middleware])
    routes = router_app.router
    routes.add_post("/v1/service/Login", sessions.login_handler({
        mycrm.APP: mycrm.authenticate,
        myrcc.APP: myrcc.authenticate,
        myistra.APP: myistra.authenticate,
    }))
    routes.add_post("/v1/service/Logout", sessions.logout)
    routes.add_post("/v1/service/EventListener/bean", listeners.create_listener)
    routes.add_delete("/v1/service/EventListener/bean/{name}", listeners.delete_listener)
    routes.add_get("/ws-service/{app}", push.ws_service)
    mycrm.add_routes(routes)
    myrcc.add_routes(routes)
    myistra.add_routes(routes)
    app.add_subapp("/restletrouter", router_app)

    control.add_routes(app)
    myistra.add_control_routes(app)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_close_sockets)


async def _lifecycle(app: web.Application):
    world: IstraWorld = app[STATE].istra
    world.loop = asyncio.get_running_loop()  # so other threads can drive the world (world.on_loop)
    sweeper = asyncio.ensure_future(_sweep(world))
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    world.loop = None


async def _sweep(world: IstraWorld) -> None:
    # Expires the sessions idle past session_timeout even if nobody calls again.
    while True:
        await asyncio.sleep(SWEEP_EVERY)
        world.sweep_sessions()


async def _close_sockets(app: web.Application) -> None:
    # Open websockets would otherwise hold the server's shutdown for its whole timeout.
    world: IstraWorld = app[STATE].istra
    for session in world.sessions.with_sockets():  # forgotten sessions' sockets too
        push.close_session_sockets(session, 1001, "server shutdown")
    await asyncio.sleep(0.05)
    push.abort_all_sockets(world)
