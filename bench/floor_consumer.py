"""The floor of daphne's side of the pop-up path: a consumer that joins a group and forwards what comes.

Bench only: ``ctihub/routing.py`` serves it at ``ws/bench/floor/<group>/`` when ``settings.BENCH_FLOORS``
is true, on the same daphne, behind the same middleware as the console. No session check, no
snapshot, no resync, no viewer: what daphne costs to take a group message off the channel layer and
write it to a socket as JSON, which no console can cost less than. ``bench.popup_latency`` sends it
cards of a real card's size with ``group_send`` and compares daphne's CPU per card with the console's.
"""

from __future__ import annotations

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer


class FloorConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.group = self.scope["url_route"]["kwargs"]["group"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "snapshot", "calls": []})  # the client waits for it, as for a console's

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def dispatch(self, message):
        # As the console's: no hop to asgiref's sync thread per message (channels closes old database
        # connections there), which a bare forwarder has no use for.
        await getattr(self, get_handler_name(message))(message)

    async def call_card(self, event):
        await self.send_json({"type": "card", "card": event["card"]})
