"""retailCRM, simulated: the API side ctihub calls and the calling side that calls ctihub.

``register(app)`` mounts it on the simulator's aiohttp application:

* ``/api/v5/integration-modules/{code}/edit`` and ``/api/v5/integration-modules/{code}``;
* ``/api/v5/telephony/call/event``, ``/api/v5/telephony/calls/upload``,
  ``/api/v5/telephony/manager``; ``/api/v5/users/{id}/status`` (a manager's status);
* ``/_sim/retailcrm/...``: the control API (``control.py``), including the caller
  side (``caller.py``: requests to makeCallUrl and changeUserStatusUrl).

Modules: ``world`` (all the state and the API's rules), ``api`` (the HTTP
endpoints: key check, rate limits, down/slow switches), ``caller``, ``control``.
"""

from __future__ import annotations

from aiohttp import web

from simulator.keys import STATE
from simulator.retailcrm import api, control
from simulator.retailcrm.world import RetailCrmWorld

__all__ = ["RetailCrmWorld", "register"]


def register(app: web.Application) -> None:
    """Mount retailCRM's API and its control API on ``app`` (``app[STATE].retailcrm`` is the world)."""
    app[STATE].systems.add("retailcrm")
    api.add_routes(app)
    control.add_routes(app)
