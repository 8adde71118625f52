"""channels_redis's layer, receiving a process's messages in batches (issue 16).

Every consumer of a daphne process has a channel ``specific.<process>!<consumer>``; channels_redis keeps
all of them in one Redis sorted set, ``<prefix>specific.<process>!``, scored by send time, and hands each
message out to the consumer (or consumers, ``__asgi_channel__``) it names through a local buffer per
consumer. channels_redis 4.3 takes that set's messages one at a time, four round trips each (an ``EVAL``
that restores its backup, ``BZPOPMIN``, ``ZADD`` to the backup, ``ZPOPMIN`` off it), one after the
other: on a loaded machine that chain, not daphne's CPU, bounded how many cards a second a process took,
the set filled to its capacity and ``group_send`` dropped cards (docs/performance.md, the pop-up section).

Here one task per process (``_fetch``) takes up to ``RECEIVE_BATCH`` waiting messages in one script,
which also acknowledges the previous batch, and puts them in the consumers' buffers; when nothing waits it
blocks in ``BZPOPMIN`` as channels_redis does. Consumers only ever wait on their own buffer, so cancelling
a receive (a consumer closing) never interrupts a Redis command: a message taken off Redis always reaches
its buffer. General channels (no ``!``) are received as channels_redis does.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from channels_redis.core import RedisChannelLayer
from redis.exceptions import NoScriptError

logger = logging.getLogger(__name__)

# Messages one round trip takes at most: enough that a backlog drains in few round trips, few enough that
# one reply (about 1-2 KB a card) stays small and the loop is not held long by one batch.
RECEIVE_BATCH = 100

# One round trip a batch. KEYS: the channel's set, the backup holding the previous batch (delivered: drop
# it), the backup for this batch. The backups alternate (see ``_slot``), so a batch whose reply never came
# back (a broken connection) is still in its backup when the script runs again for it, and is put back in
# front of the channel with its scores, while the batch before it, delivered, is dropped: neither lost nor
# delivered twice. Returns the members taken, oldest first. ARGV: batch size, backup expiry (seconds).
_TAKE_BATCH = """
redis.call('DEL', KEYS[2])
local undelivered = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
if #undelivered > 0 then
    for i = 1, #undelivered, 2 do
        redis.call('ZADD', KEYS[1], undelivered[i + 1], undelivered[i])
    end
    redis.call('DEL', KEYS[3])
    redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local taken = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
if #taken == 0 then
    return taken
end
local backup = {}
local members = {}
for i = 1, #taken, 2 do
    backup[#backup + 1] = taken[i + 1]
    backup[#backup + 1] = taken[i]
    members[#members + 1] = taken[i]
end
redis.call('ZADD', KEYS[3], unpack(backup))
redis.call('EXPIRE', KEYS[3], ARGV[2])
return members
"""


class _Failed:
    """Put in a waiting consumer's buffer when the process's fetch failed: that receive raises ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class BatchingRedisChannelLayer(RedisChannelLayer):
    """``RedisChannelLayer`` whose process-specific channels are received in batches, one round trip each.

    Kept from channels_redis: the keys and the messages (so ``group_send``, channels_redis's or the worker's
    pipelined one in telephony/publish.py, writes what this reads), a channel's order (lowest score first),
    capacity and expiry (both the sender's), one event loop receiving at a time, a blocking wait of
    ``brpop_timeout`` when nothing waits, and an error reaching the consumers when Redis fails (they
    close, and the page reconnects and joins its groups again: a restarted Redis has lost them).
    What a ``BZPOPMIN`` pops is not backed up, as with channels_redis: lost only if the connection breaks
    after Redis popped it and before its reply was read.
    """

    receive_batch = RECEIVE_BATCH

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fetcher: asyncio.Task | None = None
        # Receives waiting on each local channel's buffer: the fetch runs while any does.
        self._waiting: collections.Counter[str] = collections.Counter()
        # Which of the two backups the next batch goes to; changes only when a batch was delivered.
        self._slot = 0
        self._take_sha: str | None = None

    async def group_add(self, group, channel):
        """channels_redis's (``ZADD`` the channel, ``EXPIRE`` the group) in one round trip, not two: in a
        connect storm each console joins two groups, and the commands' own redis-py work on daphne's event
        loop was 12% of its busy CPU (issue 16)."""
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        group_key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        async with connection.pipeline(transaction=False) as pipe:
            pipe.zadd(group_key, {channel: time.time()})
            pipe.expire(group_key, self.group_expiry)
            await pipe.execute()

    async def receive(self, channel):
        if "!" not in channel:
            return await super().receive(channel)
        assert self.require_valid_channel_name(channel)
        real_channel = self.non_local_name(channel)
        assert real_channel.endswith(self.client_prefix + "!"), "Wrong client prefix"
        loop = asyncio.get_running_loop()
        self.receive_count += 1
        self._waiting[channel] += 1
        try:
            if self.receive_count == 1:
                self.receive_event_loop = loop
            elif self.receive_event_loop is not loop:
                raise RuntimeError("Two event loops are trying to receive() on one channel layer at once!")
            buffer = self.receive_buffer[channel]
            if buffer.empty():
                self._start_fetching(loop, real_channel)
                # Cancelled here, nothing is lost: asyncio.Queue.get takes the message only when it returns.
                message = await buffer.get()
            else:
                message = buffer.get_nowait()
            if isinstance(message, _Failed):
                raise message.error
            return message
        finally:
            self.receive_count -= 1
            self._waiting[channel] -= 1
            if not self._waiting[channel]:
                del self._waiting[channel]
                # A buffer nobody waits on and that holds nothing: drop it (a closed consumer's, mostly).
                if channel in self.receive_buffer and self.receive_buffer[channel].empty():
                    del self.receive_buffer[channel]
            if self.receive_count == 0:
                self.receive_event_loop = None

    def _start_fetching(self, loop: asyncio.AbstractEventLoop, real_channel: str) -> None:
        fetcher = self._fetcher
        # A fetch left behind by a closed event loop (tests run one loop after another) never finishes.
        if fetcher is None or fetcher.done() or fetcher.get_loop() is not loop:
            self._fetcher = loop.create_task(self._fetch(real_channel), name=f"channel-layer-fetch {real_channel}")

    async def _fetch(self, real_channel: str) -> None:
        """Move the process's messages to its consumers' buffers while any consumer waits."""
        channel_key = self.prefix + real_channel
        connection = self.connection(self.consistent_hash(real_channel))
        backups = (f"{channel_key}$inflight0", f"{channel_key}$inflight1")
        try:
            block = False
            while self.receive_count > 0:
                if block:
                    popped = await connection.bzpopmin(channel_key, timeout=self.brpop_timeout)
                    if popped is not None:
                        self._deliver(real_channel, [popped[1]])
                        block = False  # the rest of a burst (a card goes to two groups) in one batch
                    continue
                keys = (channel_key, backups[1 - self._slot], backups[self._slot])
                taken = await self._take(connection, keys)
                # No await from here to the buffers: a batch read is a batch delivered.
                self._slot = 1 - self._slot
                self._deliver(real_channel, taken)
                block = len(taken) < self.receive_batch  # fewer than asked for: the channel is empty
        except BaseException as error:
            # The consumers waiting now would wait for a fetch that no longer runs: each gets the error
            # (channels_redis raised it in the receive that was fetching; the others retried, and failed
            # in turn while Redis was down). The next receive starts a new fetch.
            for channel, count in list(self._waiting.items()):
                for _ in range(count):
                    self.receive_buffer[channel].put_nowait(_Failed(error))
            if not isinstance(error, Exception):
                raise
            logger.warning("receiving %s failed: %r", real_channel, error)

    async def _take(self, connection, keys: tuple[str, str, str]) -> list[bytes]:
        args = (self.receive_batch, int(self.expiry))
        if self._take_sha is not None:
            try:
                return await connection.evalsha(self._take_sha, len(keys), *keys, *args)
            except NoScriptError:  # Redis restarted (or flushed its scripts); the script did not run
                pass
        self._take_sha = await connection.script_load(_TAKE_BATCH)
        return await connection.evalsha(self._take_sha, len(keys), *keys, *args)

    def _deliver(self, real_channel: str, members: list[bytes]) -> None:
        for member in members:
            try:
                message = self.deserialize(member)
            except Exception:  # one unreadable message must not hold up (or lose) the rest of the batch
                logger.exception("dropped a message on %s that could not be read", real_channel)
                continue
            if "trace" in message:  # the benchmark's stage times (ctihub/lib/card_trace.py)
                message["trace"]["fetched"] = time.time()
            targets = message.pop("__asgi_channel__", real_channel)
            for target in targets if isinstance(targets, list) else [targets]:
                self.receive_buffer[target].put_nowait(message)

    async def close_pools(self):
        fetcher = self._fetcher
        if fetcher is not None and not fetcher.done() and fetcher.get_loop() is asyncio.get_running_loop():
            # Its batch, if cut off, stays in its backup and is put back by the next fetch.
            fetcher.cancel()
            await asyncio.gather(fetcher, return_exceptions=True)
        await super().close_pools()
