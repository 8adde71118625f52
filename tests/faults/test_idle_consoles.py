"""A console that hears nothing for a while keeps its websocket (found by the Redis fault test)."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer


def test_it_keeps_waiting_on_the_channel_layer_past_redis_blocking_pop():
    # channels-redis pops with a 5 s BZPOPMIN; with redis-py's default 5 s read timeout the pop's own
    # empty answer came too late and every idle consumer died with close code 1011.
    async def idle_receive():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        with pytest.raises(asyncio.TimeoutError):  # ours, not redis-py's "Timeout reading from ..."
            await asyncio.wait_for(layer.receive(channel), timeout=7)

    asyncio.run(idle_receive())
