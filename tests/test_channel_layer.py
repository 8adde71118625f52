"""The project's channel layer (ctihub/lib/channel_layer.py) on the real Redis: a process's messages in batches."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers
from redis.asyncio import Redis as AsyncRedis

from telephony.publish import _group_send_pipelined, _redis_client


def _layer():
    # A layer of its own per test: one keeps buffers and connections of the event loop that used it.
    return channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)


async def _join(layer, count: int, group: str) -> list[str]:
    channels = [await layer.new_channel() for _ in range(count)]
    for channel in channels:
        await layer.group_add(group, channel)
    return channels


async def _receive_all(layer, channel: str, count: int, timeout: float = 30) -> list[dict]:
    return [await asyncio.wait_for(layer.receive(channel), timeout=timeout) for _ in range(count)]


def _pipelined(layer, sends):
    """As the worker's publisher sends (telephony/publish.py): its own script, scores of its own."""
    client = _redis_client(layer)
    try:
        _group_send_pipelined(layer, client, sends)
    finally:
        client.close()


def test_it_keeps_each_channel_s_order_in_a_burst_to_many_channels_of_one_process():
    """50 consoles of one process, each in its own group and all in a shared one; 20 cards each, interleaved,
    sent as the worker sends them: every console gets its own and the shared ones, in the order sent."""
    layer = _layer()
    tag = uuid.uuid4().hex

    async def run():
        shared = f"sup-{tag}"
        channels = [await layer.new_channel() for _ in range(50)]
        for i, channel in enumerate(channels):
            await layer.group_add(f"agent-{tag}-{i}", channel)
            await layer.group_add(shared, channel)
        sends = []
        for n in range(20):
            for i in range(len(channels)):
                sends.append((f"agent-{tag}-{i}", {"type": "call.card", "n": n, "to": i}))
            sends.append((shared, {"type": "call.card", "n": n, "to": "all"}))
        await asyncio.to_thread(_pipelined, layer, sends)
        received = await asyncio.gather(*(_receive_all(layer, channel, 40) for channel in channels))
        await layer.flush()
        return received

    received = asyncio.run(run())
    for i, messages in enumerate(received):
        assert [m["n"] for m in messages if m["to"] == i] == list(range(20))
        assert [m["n"] for m in messages if m["to"] == "all"] == list(range(20))
        assert len(messages) == 40


def test_it_takes_a_burst_off_redis_in_one_round_trip_a_batch(monkeypatch):
    """channels_redis 4.3 made four round trips a message (EVAL, BZPOPMIN, ZADD, ZPOPMIN): 1,200 for 300."""
    layer = _layer()
    tag = uuid.uuid4().hex
    commands: list[str] = []
    real_execute = AsyncRedis.execute_command

    async def counting_execute(self, *args, **options):
        commands.append(str(args[0]).upper())
        return await real_execute(self, *args, **options)

    async def run():
        channels = await _join(layer, 3, f"agent-{tag}")
        await asyncio.to_thread(_pipelined, layer, [(f"agent-{tag}", {"type": "call.card", "n": n}) for n in range(300)])
        monkeypatch.setattr(AsyncRedis, "execute_command", counting_execute)
        received = await asyncio.gather(*(_receive_all(layer, channel, 300) for channel in channels))
        monkeypatch.undo()
        await layer.flush()
        return received

    received = asyncio.run(run())
    assert all([m["n"] for m in messages] == list(range(300)) for messages in received)
    # 300 messages (each for all three consoles): three batches of 100, one that finds the channel empty, the
    # blocking wait after it; a script load the first time.
    assert len(commands) <= 8, commands


def test_it_loses_no_message_when_a_receive_is_cancelled_mid_batch():
    """A console's receive is cancelled when it closes, whatever the layer is doing for the process then.

    One console receives (and so fetches for the process) while cards for another console queue up; it is
    cancelled again and again at random moments. channels_redis lost the message whose BZPOPMIN reply was
    being read when the cancellation came (redis-py drops the connection, Redis had popped it)."""
    layer = _layer()
    tag = uuid.uuid4().hex
    rng = random.Random(16)

    async def run():
        (closing,) = await _join(layer, 1, f"closing-{tag}")
        (other,) = await _join(layer, 1, f"other-{tag}")
        await asyncio.to_thread(_pipelined, layer, [(f"other-{tag}", {"type": "call.card", "n": n}) for n in range(300)])
        for _ in range(60):
            receive = asyncio.ensure_future(layer.receive(closing))
            await asyncio.sleep(rng.uniform(0, 0.003))
            receive.cancel()
            await asyncio.gather(receive, return_exceptions=True)
        received = await _receive_all(layer, other, 300, timeout=10)
        await layer.flush()
        return received

    received = asyncio.run(run())
    assert [m["n"] for m in received] == list(range(300))


def test_it_puts_back_a_batch_whose_reply_was_lost_and_delivers_it_once(monkeypatch):
    """The script ran (its batch moved to the backup) but the connection broke before its reply was read:
    the next fetch puts that batch back in front of the channel and the one delivered before is not."""
    from ctihub.lib.channel_layer import BatchingRedisChannelLayer

    layer = _layer()
    tag = uuid.uuid4().hex
    real_take = BatchingRedisChannelLayer._take
    calls = []

    async def reply_lost_once(self, connection, keys):
        taken = await real_take(self, connection, keys)
        calls.append(len(taken))
        if len(calls) == 2:
            await asyncio.sleep(0.5)  # the first ten received, the next receive waiting
            raise ConnectionError("reply lost")
        return taken

    async def run():
        (channel,) = await _join(layer, 1, f"agent-{tag}")
        monkeypatch.setattr(BatchingRedisChannelLayer, "receive_batch", 10)
        monkeypatch.setattr(BatchingRedisChannelLayer, "_take", reply_lost_once)
        await asyncio.to_thread(_pipelined, layer, [(f"agent-{tag}", {"type": "call.card", "n": n}) for n in range(30)])
        first = await _receive_all(layer, channel, 10)
        with pytest.raises(ConnectionError):  # the waiting receive hears of it, as with channels_redis
            await asyncio.wait_for(layer.receive(channel), timeout=10)
        rest = await _receive_all(layer, channel, 20)
        extra = [m async for m in _anything_more(layer, channel)]
        await layer.flush()
        return first + rest + extra

    received = asyncio.run(run())
    assert calls[:3] == [10, 10, 10]  # the second batch was taken twice: once lost, once put back and taken
    assert [m["n"] for m in received] == list(range(30))


async def _anything_more(layer, channel):
    try:
        yield await asyncio.wait_for(layer.receive(channel), timeout=1)
    except TimeoutError:
        return


def test_it_delivers_a_burst_of_2000_cards_to_one_process():
    """A card is one message a group on a process's channel; at the capacity (it was 1,000) channels_redis's
    group_send skips the channel and the card comes only with the next resync (15 s)."""
    layer = _layer()
    tag = uuid.uuid4().hex

    async def run():
        supervisor, agent = await _join(layer, 2, f"sup-{tag}")
        await layer.group_add(f"agent-{tag}", agent)
        sends = [(group, {"type": "call.card", "n": n}) for n in range(1000) for group in (f"sup-{tag}", f"agent-{tag}")]
        await asyncio.to_thread(_pipelined, layer, sends)  # 2,000 cards before daphne takes any
        received = await asyncio.gather(_receive_all(layer, supervisor, 1000), _receive_all(layer, agent, 2000))
        await layer.flush()
        return received

    supervisor, agent = asyncio.run(run())
    assert [m["n"] for m in supervisor] == list(range(1000))
    assert sorted(m["n"] for m in agent) == sorted(list(range(1000)) * 2)


def test_it_raises_in_a_waiting_receive_when_redis_is_unreachable():
    """A console learns that its layer is gone (it closes; the page reconnects and joins again), not waits."""
    from ctihub.lib.channel_layer import BatchingRedisChannelLayer

    layer = BatchingRedisChannelLayer(hosts=[{"address": "redis://127.0.0.1:9/0"}])

    async def run():
        channel = await layer.new_channel()
        with pytest.raises(Exception) as raised:
            await asyncio.wait_for(layer.receive(channel), timeout=10)
        assert not isinstance(raised.value, asyncio.TimeoutError)

    asyncio.run(run())


def test_it_joins_a_group_in_one_round_trip_as_channels_redis_does_in_two(monkeypatch):
    """Two joins a console, a thousand consoles at once in a connect storm (issue 16)."""
    from redis.asyncio.client import Pipeline

    layer = _layer()
    group = f"agent-{uuid.uuid4().hex}"
    trips: list[str] = []
    real_execute, real_pipeline = AsyncRedis.execute_command, Pipeline.execute

    async def counting_execute(self, *args, **options):
        trips.append(str(args[0]).upper())
        return await real_execute(self, *args, **options)

    async def counting_pipeline(self, *args, **kwargs):
        trips.append("pipeline of " + " ".join(str(command[0][0]).upper() for command in self.command_stack))
        return await real_pipeline(self, *args, **kwargs)

    async def run():
        channel = await layer.new_channel()
        monkeypatch.setattr(AsyncRedis, "execute_command", counting_execute)
        monkeypatch.setattr(Pipeline, "execute", counting_pipeline)
        await layer.group_add(group, channel)
        monkeypatch.undo()
        connection = layer.connection(layer.consistent_hash(group))
        members = await connection.zrange(layer._group_key(group), 0, -1)
        ttl = await connection.ttl(layer._group_key(group))
        await layer.flush()
        return channel, members, ttl

    channel, members, ttl = asyncio.run(run())
    assert trips == ["pipeline of ZADD EXPIRE"]
    assert members == [channel.encode()] and 0 < ttl <= layer.group_expiry
