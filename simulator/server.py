"""The simulator's HTTP/websocket server (aiohttp) and its command line."""

from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import web

from simulator import istra, retailcrm, telepo
from simulator.keys import STATE
from simulator.state import SimulatorState

logger = logging.getLogger("simulator")


async def health(request: web.Request) -> web.Response:
    state: SimulatorState = request.app[STATE]
    return web.json_response({"status": "ok", "systems": sorted(state.systems)})


def build_app(state: SimulatorState | None = None, demo: bool = False, demo_calls_per_minute: float = 0.0) -> web.Application:
    app = web.Application()
    app[STATE] = state or SimulatorState()
    app.router.add_get("/_sim/health", health)
    istra.register(app)  # /restletrouter (myCrm, myRCC) and /_sim/istra
    retailcrm.register(app)  # /api/v5 (integration-modules, telephony) and /_sim/retailcrm
    if demo:
        _add_demo(app, demo_calls_per_minute)
    telepo.register(app)  # /api/call (control, state), CRM connector webhooks and /_sim/telepo
    return app


def _add_demo(app: web.Application, calls_per_minute: float) -> None:
    from simulator import demo

    demo.seed(app[STATE])
    if calls_per_minute <= 0:
        return

    async def start_traffic(app: web.Application):
        task = asyncio.ensure_future(demo.DemoTraffic(app[STATE], calls_per_minute).run())
        yield
        task.cancel()

    app.cleanup_ctx.append(start_traffic)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--demo", action="store_true", help="Seed the demo enterprise (simulator/demo.py).")
    parser.add_argument("--demo-calls-per-minute", type=float, default=0.0,
                        help="With --demo: play demo calls at this rate (0: none).")
    parser.add_argument("--access-log", action="store_true",
                        help="Log every HTTP request at INFO (off: a benchmark's control requests and "
                             "polls are thousands a second, and each line costs the simulator's CPU).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s simulator %(message)s")
    logger.info("simulator listening on http://%s:%s/", args.host, args.port)
    app = build_app(demo=args.demo, demo_calls_per_minute=args.demo_calls_per_minute)
    web.run_app(app, host=args.host, port=args.port, print=None,
                **({} if args.access_log else {"access_log": None}))
