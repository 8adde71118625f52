"""The console websocket: live call cards in, call control out.

On connect the page gets a snapshot of the viewer's calls, then live card
updates. The viewer joins its groups before the snapshot is read, so nothing
that happens in between is missed; cards carry a version, so the page drops
an update older than what it shows. Every incoming message is checked against
who the viewer is: an agent only ever sees and drives their own calls.
"""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from telephony import console
from telephony.providers.base import ProviderError

logger = logging.getLogger(__name__)

CLOSE_LOGIN_REQUIRED = 4401
CLOSE_NO_ROLE = 4400
CLOSE_TRY_AGAIN = 1013  # RFC 6455 "try again later": the page reconnects with backoff
SNAPSHOT_TIMEOUT_SECONDS = 10


class ConsoleConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_LOGIN_REQUIRED)
            return
        self.viewer = await database_sync_to_async(console.viewer_for)(user)
        if not self.viewer.has_role:
            await self.close(code=CLOSE_NO_ROLE)
            return
        self.groups_joined = self.viewer.groups()
        try:
            await asyncio.wait_for(self._join_and_send_snapshot(), SNAPSHOT_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            # A console left open without its snapshot would show nothing and never know: close it
            # so the page reconnects (seen once after a Redis restart, group_add never answering).
            logger.warning("console snapshot not sent within %ss; closing", SNAPSHOT_TIMEOUT_SECONDS)
            await self.close(code=CLOSE_TRY_AGAIN)

    async def _join_and_send_snapshot(self):
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.send_json(await database_sync_to_async(console.snapshot)(self.viewer))

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    # --- from the layer ---------------------------------------------------------------
    async def call_card(self, event):
        card = event["card"]
        if self.viewer.may_see(card):  # defence in depth: groups already scope this
            await self.send_json({"type": "card", "card": card})

    async def agent_status(self, event):
        await self.send_json({"type": "agent_status", "agent": event["agent"], "status": event["status"]})

    async def console_push(self, event):
        """Anything else a feature pushes to a console (counters, voicemail...)."""
        await self.send_json(event["payload"])

    # --- from the page --------------------------------------------------------------
    async def receive_json(self, content, **kwargs):
        request_id = content.get("id") if isinstance(content, dict) else None
        try:
            result = await self._dispatch(content if isinstance(content, dict) else {})
        except console.Refused as exc:
            await self.send_json({"type": "result", "id": request_id, "ok": False, "error": str(exc)})
        except ProviderError as exc:
            await self.send_json({"type": "result", "id": request_id, "ok": False, "error": f"PBX: {exc}"})
        else:
            await self.send_json({"type": "result", "id": request_id, "ok": True, "result": _jsonable(result)})

    async def _dispatch(self, content: dict):
        action = content.get("action")
        if action == "call_action":
            call_id = content.get("call")
            if not isinstance(call_id, int):
                raise console.Refused("which call?")
            payload = content.get("payload") if isinstance(content.get("payload"), dict) else {}
            return await database_sync_to_async(console.act_on_call)(
                self.viewer, call_id, str(content.get("name", "")), payload
            )
        if action == "dial":
            return await database_sync_to_async(console.dial)(self.viewer, str(content.get("number", "")))
        if action == "set_status":
            return await database_sync_to_async(console.change_status)(self.viewer, str(content.get("status", "")))
        if action == "snapshot":
            return await database_sync_to_async(console.snapshot)(self.viewer)
        raise console.Refused(f"unknown request {action!r}")


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
