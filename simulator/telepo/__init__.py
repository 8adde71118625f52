"""MiCloud Telepo, simulated: call control, call-state snapshots, and the CRM connector webhook.

``register(app)`` mounts it on the simulator's aiohttp application:

* ``/api/call/control/v1/...`` and ``/api/call/state/v1/snapshot/...`` (``api.py``);
* the webhook deliveries to the configured CRM connector URL (``webhooks.py``);
* ``/_sim/telepo/...``: the control API (``control.py``).

``world.py`` holds all the state and the API's rules.
"""

from __future__ import annotations

from aiohttp import web

from simulator.keys import STATE
from simulator.telepo import api, control, webhooks
from simulator.telepo.world import TelepoWorld

__all__ = ["TelepoWorld", "register"]


def register(app: web.Application) -> None:
    """Mount Telepo's API and its control API on ``app`` (``app[STATE].telepo`` is the world)."""
    app[STATE].systems.add("telepo")
    api.add_routes(app)
    control.add_routes(app)
    app.cleanup_ctx.append(webhooks.lifecycle)
