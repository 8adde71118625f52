"""The key the aiohttp app keeps the simulator's world under (a plain string key warns)."""

from aiohttp import web

STATE = web.AppKey("state")
