"""Pushing call cards to browsers through the Channels layer.

Domain code runs in plain threads (socket listeners, Celery, Django views). A
new event loop per publish would also mean a new Redis connection pool per
publish (channels-redis keys its pools by loop), so one long-lived loop in a
daemon thread sends everything, in order, from a queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future

from channels.layers import get_channel_layer

from telephony.cards import SUPERVISORS_GROUP, agent_group, call_card, cards_of
from telephony.models import Call

logger = logging.getLogger(__name__)


class _Publisher:
    def __init__(self):
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None
        self._in_flight: set[Future] = set()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        import os

        with self._lock:
            # After a fork (Celery prefork) the parent's thread is gone: start our own.
            if self._loop is None or self._pid != os.getpid():
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def run():
                    asyncio.set_event_loop(loop)
                    ready.set()
                    loop.run_forever()

                threading.Thread(target=run, name="channels-publisher", daemon=True).start()
                ready.wait()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def send(self, groups: list[str], message: dict) -> Future:
        return self.send_many([(groups, message)])

    def send_many(self, messages: list[tuple[list[str], dict]]) -> Future:
        """Send in the given order (a call's cards must not overtake each other)."""
        future = asyncio.run_coroutine_threadsafe(self._send(messages), self._ensure_loop())
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._landed)
        return future

    def _landed(self, future: Future) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def drain(self, timeout: float) -> None:
        """Wait until every card handed over so far has reached the channel layer (shutdown, benchmarks)."""
        with self._lock:
            pending = list(self._in_flight)
        for future in pending:
            future.result(timeout=timeout)

    async def _send(self, messages: list[tuple[list[str], dict]]) -> None:
        layer = get_channel_layer()
        sends = [(group, message) for groups, message in messages for group in groups]
        if len(sends) > 1 and _can_pipeline(layer):
            try:
                await _group_send_pipelined(layer, sends)
                return
            except Exception:  # one at a time below: a group that fails does not take the others with it
                logger.warning("pipelined publish failed; sending group by group", exc_info=True)
        for groups, message in messages:
            for group in groups:
                try:
                    await layer.group_send(group, message)
                except Exception:  # a card not pushed is re-sent by the next snapshot; never crash the caller
                    logger.exception("could not publish to %s", group)


publisher = _Publisher()


# What channels-redis runs for one group_send, per connection: each channel that has room gets the message.
_GROUP_SEND_LUA = """
    local over_capacity = 0
    local current_time = ARGV[#ARGV - 1]
    local expiry = ARGV[#ARGV]
    for i=1,#KEYS do
        if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
            redis.call('ZADD', KEYS[i], current_time, ARGV[i])
            redis.call('EXPIRE', KEYS[i], expiry)
        else
            over_capacity = over_capacity + 1
        end
    end
    return over_capacity
"""


def _can_pipeline(layer) -> bool:
    from channels_redis.core import RedisChannelLayer

    # One Redis host: every group and channel key lives on connection 0 (a ring of hosts hashes them apart).
    return type(layer) is RedisChannelLayer and layer.ring_size == 1


async def _group_send_pipelined(layer, sends: list[tuple[str, dict]]) -> None:
    """Several ``group_send``s in two round trips to Redis, in order, with channels-redis's own semantics.

    ``layer.group_send`` makes four round trips a group (expire the group's members, read them,
    expire each member's old messages, run the push script); a card goes to two groups (the
    supervisors and its agent), so eight a frame, each a wake-up of the publisher's loop. Here the
    first round trip expires and reads every group's members, the second expires their old messages
    and pushes every message with one script, the groups' in the order given (a channel in two
    groups gets both messages, as with two group_sends).
    """
    connection = layer.connection(0)
    pipe = connection.pipeline(transaction=False)
    for group, _message in sends:
        assert layer.require_valid_group_name(group), "Group name not valid"
        key = layer._group_key(group)
        pipe.zremrangebyscore(key, min=0, max=int(time.time()) - layer.group_expiry)
        pipe.zrange(key, 0, -1)
    members = (await pipe.execute())[1::2]
    keys: list[str] = []
    payloads: list[bytes] = []
    capacities: list[int] = []
    for (_group, message), names in zip(sends, members):
        if not names:
            continue
        by_connection, key_to_message, key_to_capacity = layer._map_channel_keys_to_connection(
            [name.decode("utf8") for name in names], message)
        for channel_keys in by_connection.values():  # one host: all on connection 0
            for channel_key in channel_keys:
                keys.append(channel_key)
                payloads.append(key_to_message[channel_key])
                capacities.append(key_to_capacity[channel_key])
    if not keys:
        return
    pipe = connection.pipeline(transaction=False)
    for channel_key in dict.fromkeys(keys):
        pipe.zremrangebyscore(channel_key, min=0, max=int(time.time()) - int(layer.expiry))
    pipe.eval(_GROUP_SEND_LUA, len(keys), *keys, *payloads, *capacities, time.time(), layer.expiry)
    over_capacity = (await pipe.execute())[-1]
    if over_capacity:
        logger.info("%s of %s channels over capacity", over_capacity, len(keys))


def groups_for(call: Call) -> list[str]:
    groups = [SUPERVISORS_GROUP]
    if call.agent_id:
        groups.append(agent_group(call.agent_id))
    return groups


def publish_call(call_id: int, wait: bool = False) -> Future | None:
    """Push the call's card; the Future says when it left (None if the call is gone)."""
    call = Call.objects.filter(pk=call_id).first()
    if call is None:
        return None
    future = publisher.send(groups_for(call), {"type": "call.card", "card": call_card(call)})
    if wait:
        future.result(timeout=5)
    return future


def publish_cards(calls: list[Call]) -> Future:
    """Push the cards of calls as they are in memory (the domain's copies at each change), in order.

    The rows were just written, so nothing is read back; retailCRM's fields for all the cards
    are looked up together.
    """
    return publisher.send_many(
        [(groups_for(call), {"type": "call.card", "card": card}) for call, card in zip(calls, cards_of(calls))]
    )


def publish_to_groups(groups: list[str], message: dict) -> Future:
    return publisher.send(groups, message)
