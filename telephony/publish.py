"""Pushing call cards to browsers through the Channels layer.

Domain code runs in plain threads (socket listeners, Celery, Django views). One
long-lived daemon thread sends everything, in order, from a queue (see
``_Publisher``): a new event loop per publish would also mean a new Redis
connection pool per publish (channels-redis keys its pools by loop).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager

import redis
from channels.layers import get_channel_layer

from ctihub.lib import card_trace
from telephony.cards import SUPERVISORS_GROUP, agent_group, call_card, cards_of
from telephony.models import Call

logger = logging.getLogger(__name__)

EXIT_DRAIN_SECONDS = 5.0


class _Publisher:
    """One thread sends every message of the process, in the order handed over, from a queue.

    With channels-redis on one Redis host (production's layer) it sends with a plain Redis client,
    pipelined (``_group_send_pipelined``): a card's two group messages in two round trips, and
    whatever queued up meanwhile in the same two. Any other layer (the in-memory one of some tests)
    is sent to with its own ``group_send`` on the thread's event loop. Either way callers get a
    Future that says when their messages left.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue | None = None
        self._pid: int | None = None
        self._in_flight: set[Future] = set()
        self._gathering = threading.local()
        self._exit_hooked = False

    def _ensure_thread(self) -> queue.SimpleQueue:
        with self._lock:
            # After a fork (Celery prefork) the parent's thread is gone: start our own.
            if self._queue is None or self._pid != os.getpid():
                self._queue, self._pid = queue.SimpleQueue(), os.getpid()
                threading.Thread(target=self._run, args=(self._queue,), name="channels-publisher", daemon=True).start()
                if not self._exit_hooked:
                    self._exit_hooked = True
                    atexit.register(self._drain_at_exit)
            return self._queue

    def _drain_at_exit(self) -> None:
        # A process that exits (a worker's warm shutdown) still sends what it handed over: the cards, and
        # the CRM hand-off that would otherwise wait for the sweep.
        if self._pid != os.getpid():
            return
        try:
            self.drain(timeout=EXIT_DRAIN_SECONDS)
        except Exception:
            logger.warning("exiting with cards or tasks not sent", exc_info=True)

    def send(self, groups: list[str], message: dict) -> Future:
        return self.send_many([(groups, message)])

    def send_many(self, messages: list[tuple[list[str], dict]], tasks: list[tuple[object, tuple]] = ()) -> Future:
        """Send in the given order (a call's cards must not overtake each other), then queue ``tasks``.

        ``tasks`` are (Celery task, args) whose messages ``ctihub.lib.broker.direct_queue`` can push."""
        gathered = getattr(self._gathering, "batch", None)
        if gathered is not None:  # inside ``together()``: it leaves with the rest at the block's end
            gathered[0].extend(messages)
            gathered[1].extend(tasks)
            return gathered[2]
        return self._hand_over(list(messages), list(tasks), Future())

    def _hand_over(self, messages: list, tasks: list, future: Future) -> Future:
        inbox = self._ensure_thread()
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._landed)
        inbox.put((messages, tasks, future))
        return future

    def queue_tasks(self, tasks: list[tuple[object, tuple]]) -> Future:
        """Queue Celery tasks from this thread, with whatever else it sends meanwhile, in one round trip."""
        return self.send_many([], tasks)

    @contextmanager
    def together(self):
        """What this thread hands over in the block leaves in one batch when it ends (in its order).

        A frame's cards and its CRM hand-off are one wake-up of the publisher's thread and one
        pipeline to Redis, instead of two; futures returned in the block say when the batch left."""
        if getattr(self._gathering, "batch", None) is not None:
            yield  # already gathering: the outer block sends
            return
        batch = self._gathering.batch = ([], [], Future())
        try:
            yield
        finally:
            self._gathering.batch = None
            if batch[0] or batch[1]:
                self._hand_over(*batch)
            else:
                batch[2].set_result(None)

    def _landed(self, future: Future) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def drain(self, timeout: float) -> None:
        """Wait until every card handed over so far has reached the channel layer (shutdown, benchmarks)."""
        with self._lock:
            pending = list(self._in_flight)
        for future in pending:
            future.result(timeout=timeout)

    def _run(self, inbox: queue.SimpleQueue) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        wires: dict[int, _Wire] = {}  # by layer: a settings change in tests gives a new layer
        while True:
            batch = [inbox.get()]
            while True:  # what queued up while the last batch was sent goes in one go, still in order
                try:
                    batch.append(inbox.get_nowait())
                except queue.Empty:
                    break
            live = [(messages, tasks, future) for messages, tasks, future in batch
                    if future.set_running_or_notify_cancel()]
            sends = [(group, message) for messages, _tasks, _future in live for groups, message in messages
                     for group in groups]
            tasks = [task for _messages, tasks, _future in live for task in tasks]
            if card_trace.enabled():
                for _group, message in sends:
                    card_trace.stamp(message, "taken")
            try:
                layer = get_channel_layer()
                if (sends or tasks) and _can_pipeline(layer):
                    wire = wires.get(id(layer))
                    if wire is None:
                        for old in wires.values():
                            old.close()
                        wires.clear()
                        wire = wires[id(layer)] = _Wire(_redis_client(layer))
                    # The broker on the layer's Redis (one REDIS_URL): the tasks ride in the cards' pipeline.
                    if tasks and wire.is_broker():
                        tasks = _send_pipelined_or_each(layer, wire, sends, tasks)
                    elif sends:
                        _send_pipelined_or_each(layer, wire, sends)
                elif sends:
                    loop.run_until_complete(_send_each(layer, sends))
            except Exception:  # a card not pushed is re-sent by the console's resync; never stop the thread
                logger.exception("could not publish %s messages", len(sends))
            if tasks:  # not sent with the cards
                _queue_tasks(tasks)
            for _messages, _tasks, future in live:
                future.set_result(None)


async def _send_each(layer, sends: list[tuple[str, dict]]) -> None:
    for group, message in sends:
        try:
            await layer.group_send(group, message)
        except Exception:  # a card not pushed is re-sent by the next snapshot; never crash the caller
            logger.exception("could not publish to %s", group)


def _queue_tasks(tasks: list[tuple[object, tuple]]) -> None:
    """Push the tasks' messages to the broker in one round trip; if that fails, each through Celery.

    Celery's ``apply_async`` retries a broker that is away for a moment; a task that still could not be
    queued is logged, and the periodic task that backs it (the CRM sweep) finds its work in the database.
    If the push reached Redis but its answer was lost, a task is queued twice: the tasks handed over this
    way are idempotent (a call's sync sends each event under a claim)."""
    from ctihub.lib import broker
    from ctihub.lib.queueing import enqueue

    try:
        broker.push_task_messages(tasks)
        return
    except Exception:
        logger.warning("could not push %s task messages; queuing them through Celery", len(tasks), exc_info=True)
    for task, args in tasks:
        enqueue(task, *args)


def _send_pipelined_or_each(layer, client: _Wire, sends: list[tuple[str, dict]],
                            tasks: list[tuple[object, tuple]] = ()) -> list[tuple[object, tuple]]:
    """Send the cards and push the tasks' messages together; the tasks it may not have queued."""
    try:
        _group_send_pipelined(layer, client, sends, tasks)
        return []
    except Exception:  # one at a time: a group that fails does not take the others with it
        logger.warning("pipelined publish failed; sending group by group", exc_info=True)
    for group, message in sends:
        try:
            _group_send_pipelined(layer, client, [(group, message)])
        except Exception:
            logger.exception("could not publish to %s", group)
    return list(tasks)  # pushed or not, nobody knows: again (a task handed over here may run twice)


publisher = _Publisher()


# What channels-redis runs for one group_send, for many: each channel that has room gets its message, at
# its own score (a channel's messages are received lowest score first: one time for all would lose order).
_GROUP_SEND_LUA = """
    local n = #KEYS
    local expiry = ARGV[3 * n + 1]
    local over_capacity = 0
    for i=1,n do
        if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
            redis.call('ZADD', KEYS[i], ARGV[2 * n + i], ARGV[i])
            redis.call('EXPIRE', KEYS[i], expiry)
        else
            over_capacity = over_capacity + 1
        end
    end
    return over_capacity
"""
_last_score = 0.0


def _scores(count: int) -> list[str]:
    """Increasing scores from now on, never below one given before (only the publisher's thread asks)."""
    global _last_score
    out = []
    for _ in range(count):
        _last_score = max(time.time(), _last_score + 1e-6)
        out.append(repr(_last_score))
    return out


def _can_pipeline(layer) -> bool:
    from channels_redis.core import RedisChannelLayer

    # One Redis host given by its address: every group and channel key lives there (a ring of hosts hashes
    # them apart; a Sentinel setup names its master elsewhere).
    return isinstance(layer, RedisChannelLayer) and layer.ring_size == 1 and "address" in layer.hosts[0] \
        and "master_name" not in layer.hosts[0]


def _redis_client(layer) -> redis.Redis:
    """A plain client for the layer's Redis, with the options the layer's own connections get."""
    host = dict(layer.hosts[0])
    return redis.Redis.from_url(host.pop("address"), **host)


class _Wire:
    """One connection to the layer's Redis, held by the publisher's thread: a batch of commands is packed
    and sent at once and its replies read, one round trip.

    redis-py's pipeline cost more CPU than Redis does for these commands: each ``execute`` builds a
    pipeline, takes a connection from the pool (polling it for stray data first), packs every argument
    through its encoder, wraps the round trip in its retry policy and gives the connection back, about
    0.2 ms of a frame's 1 ms in the publisher's thread. Only the publisher's thread uses a wire (tests
    make their own). A failed round trip disconnects and raises; the next one connects again (the
    publisher then sends group by group and queues the tasks apart: ``_send_pipelined_or_each``).
    """

    def __init__(self, client: redis.Redis):
        self.client = client
        self._connection = None
        self._is_broker: bool | None = None

    def is_broker(self) -> bool:
        """Whether this is the broker's Redis database (then task messages may ride along). Asked once:
        Celery's settings are slow to read, and a new layer (a settings change) gets a new wire."""
        if self._is_broker is None:
            from ctihub.lib import broker

            self._is_broker = broker.same_redis(self.client)
        return self._is_broker

    def execute(self, commands: list[tuple]) -> list:
        """Each command's reply, in order; an error reply is raised once every reply is read."""
        connection = self._connection
        if connection is None:
            connection = self._connection = self.client.connection_pool.get_connection()
        try:
            connection.send_packed_command([_pack(commands)])
            replies, error = [], None
            for _command in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as exc:  # the others' replies are still to read
                    replies.append(exc)
                    error = error or exc
        except BaseException:
            self.close()
            raise
        if error is not None:
            raise error
        return replies

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()
            self.client.connection_pool.release(connection)


def _pack(commands: list[tuple]) -> bytes:
    """The commands in Redis's protocol (RESP), as redis-py packs them: str in UTF-8, numbers as text."""
    out: list[bytes] = []
    for args in commands:
        out.append(b"*%d\r\n" % len(args))
        for arg in args:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, bool) or not isinstance(arg, (bytes, int, float)):
                raise redis.DataError(f"cannot send {type(arg).__name__} to Redis")
            elif isinstance(arg, int):
                arg = b"%d" % arg
            elif isinstance(arg, float):
                arg = repr(arg).encode()
            out += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(out)


def _group_send_pipelined(layer, connection: _Wire | redis.Redis, sends: list[tuple[str, dict]],
                          tasks: list[tuple[object, tuple]] = ()) -> None:
    """Several ``group_send``s in two round trips to Redis, in order, with channels-redis's own semantics.

    ``layer.group_send`` makes four round trips a group (expire the group's members, read them,
    expire each member's old messages, run the push script); a card goes to two groups (the
    supervisors and its agent), so eight a frame, each a wake-up of the publisher's loop. Here the
    first round trip expires and reads every group's members, the second expires their old messages
    and pushes every message with one script, the groups' in the order given (a channel in two
    groups gets both messages, as with two group_sends). From the publisher's thread, on its own
    connection (``_Wire``): an event loop's wake-ups and coroutines cost as much CPU as the sending.

    ``tasks``' messages (``ctihub.lib.broker.task_messages``) are pushed to their queues in the first round
    trip: the connection must be the broker's.
    """
    from ctihub.lib import broker

    if not isinstance(connection, _Wire):  # a plain client (tests): a wire of its own for this call
        wire = _Wire(connection)
        try:
            return _group_send_pipelined(layer, wire, sends, tasks)
        finally:
            wire.close()
    pushes = broker.task_messages(tasks) if tasks else {}
    commands: list[tuple] = [("LPUSH", queue_name, *messages) for queue_name, messages in pushes.items()]
    group_expired = int(time.time()) - layer.group_expiry
    for group, _message in sends:
        assert layer.require_valid_group_name(group), "Group name not valid"
        key = layer._group_key(group)
        commands += (("ZREMRANGEBYSCORE", key, 0, group_expired), ("ZRANGE", key, 0, -1))
    members = connection.execute(commands)[len(pushes):][1::2]
    tracing = None
    if card_trace.enabled():
        tracing = time.time(), time.perf_counter(), time.thread_time()
        for _group, message in sends:
            card_trace.stamp(message, "pushed")
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
    expired = int(time.time()) - int(layer.expiry)
    commands = [("ZREMRANGEBYSCORE", channel_key, 0, expired) for channel_key in dict.fromkeys(keys)]
    commands.append(("EVAL", _GROUP_SEND_LUA, len(keys), *keys, *payloads, *capacities, *_scores(len(keys)),
                     layer.expiry))
    over_capacity = connection.execute(commands)[-1]
    if tracing:  # from the stamp "pushed" to the messages written: the benchmark's breakdown
        card_trace.note_pause("publish_write", tracing[0], time.perf_counter() - tracing[1],
                              time.thread_time() - tracing[2])
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
    messages = [(groups_for(call), {"type": "call.card", "card": card}) for call, card in zip(calls, cards_of(calls))]
    if card_trace.enabled():
        for _groups, message in messages:
            message["trace"] = card_trace.new_trace()
    return publisher.send_many(messages)


def publish_to_groups(groups: list[str], message: dict) -> Future:
    return publisher.send(groups, message)
