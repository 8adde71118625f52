"""The CRM connector side: POSTs each pending webhook message to its domain's URL, one at a time, in order.

One delivery loop per server, on its event loop. Messages are taken from the
world's queue (the control API may hold, reorder, drop or duplicate them before)
and each delivery is recorded with the status ctihub answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
from aiohttp import web

from simulator.keys import STATE
from simulator.telepo.world import TelepoWorld

POLL_SECONDS = 0.01
TIMEOUT = aiohttp.ClientTimeout(total=10)


async def deliver_forever(world: TelepoWorld) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        while True:
            batch = world.take_pending()
            for url, body in batch:
                await _deliver(session, world, url, body)
                if world.pace:
                    await asyncio.sleep(world.pace)
            if not batch:
                await asyncio.sleep(POLL_SECONDS)


async def _deliver(session: aiohttp.ClientSession, world: TelepoWorld, url: str | None, body: dict) -> None:
    entry = {"body": body, "url": url, "time": time.time(), "status": None, "dropped": False}
    if url is None:
        entry["error"] = "no CRM connector URL configured for the domain"
    else:
        try:
            async with session.post(url, json=body) as response:
                entry["status"] = response.status
                entry["answer"] = await response.text()
        except (TimeoutError, aiohttp.ClientError) as exc:
            entry["error"] = f"{exc.__class__.__name__}: {exc}"
    world.record_delivery(entry)


async def lifecycle(app: web.Application):
    task = asyncio.ensure_future(deliver_forever(app[STATE].telepo))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
