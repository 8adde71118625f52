"""The simulator's HTTP/websocket server (aiohttp) and its command line."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from simulator import istra, retailcrm, telepo
from simulator.keys import STATE
from simulator.state import SimulatorState

logger = logging.getLogger("simulator")


async def health(request: web.Request) -> web.Response:
    state: SimulatorState = request.app[STATE]
    return web.json_response({"status": "ok", "systems": sorted(state.systems)})


def build_app(state: SimulatorState | None = None) -> web.Application:
    app = web.Application()
    app[STATE] = state or SimulatorState()
    app.router.add_get("/_sim/health", health)
    istra.register(app)  # /restletrouter (myCrm, myRCC) and /_sim/istra
    retailcrm.register(app)  # /api/v5 (integration-modules, telephony) and /_sim/retailcrm
    telepo.register(app)  # /api/call (control, state), CRM connector webhooks and /_sim/telepo
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s simulator %(message)s")
    logger.info("simulator listening on http://%s:%s/", args.host, args.port)
    web.run_app(build_app(), host=args.host, port=args.port, print=None)
