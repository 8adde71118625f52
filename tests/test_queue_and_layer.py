"""The real queue and the real channel layer: Celery over Redis, channels-redis."""

import asyncio
import uuid

import pytest
import redis.connection
from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers

from ctihub.tasks import ping_task
from tests.factories import make_account, make_call


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_it_runs_a_task_in_a_real_celery_worker_through_redis(live_celery_worker):
    account = make_account()
    make_call(account)
    make_call(account)
    result = ping_task.delay()
    assert result.get(timeout=30) == {"pong": True, "calls": 2}


def test_it_sends_a_message_across_the_real_channels_redis_layer(settings):
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "ctihub.lib.channel_layer.BatchingRedisChannelLayer"

    async def round_trip():
        # A layer of its own: the shared one keeps connections bound to other tests' event loops.
        layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
        group = f"test-{uuid.uuid4().hex}"
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        await layer.group_send(group, {"type": "call.update", "call_id": "-428"})
        message = await asyncio.wait_for(layer.receive(channel), timeout=5)
        await layer.group_discard(group, channel)
        await layer.flush()
        return message

    assert asyncio.run(round_trip()) == {"type": "call.update", "call_id": "-428"}


def test_it_publishes_each_task_without_building_a_redis_client_for_it(monkeypatch):
    """kombu built a redis.Redis (and its table of response callbacks) for every task it published."""
    import redis

    from ctihub.celery import app

    made = []
    real_init = redis.Redis.__init__

    def counting_init(self, *args, **kwargs):
        made.append(1)
        real_init(self, *args, **kwargs)

    queue_name = f"test-unconsumed-{uuid.uuid4().hex}"
    with app.connection_for_write() as connection, connection.Producer() as producer:
        ping_task.apply_async(queue=queue_name, producer=producer)  # the channel's client is made here
        monkeypatch.setattr(redis.Redis, "__init__", counting_init)
        for _ in range(5):
            ping_task.apply_async(queue=queue_name, producer=producer)
        monkeypatch.undo()
        assert connection.default_channel.client.llen(queue_name) == 6  # every task is in the queue
        connection.default_channel.client.delete(queue_name)
    # Sending to a queue Celery did not know declared it in the app's queues: leave the app as it was.
    app.amqp.queues.pop(queue_name, None)
    assert made == []


def test_it_pipelines_a_burst_of_cards_to_their_groups_in_order_in_two_round_trips():
    """Each group_send of channels-redis is four round trips: a card to two groups was eight."""
    from telephony.publish import _can_pipeline, _group_send_pipelined, _redis_client

    async def members(layer, groups):
        channels = {}
        for group in groups:
            channels[group] = await layer.new_channel()
            await layer.group_add(group, channels[group])
        await layer.group_add(groups[0], channels[groups[1]])  # one console in both groups
        return channels

    async def received(layer, channel, count):
        return [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(count)]

    layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
    assert _can_pipeline(layer)
    tag = uuid.uuid4().hex
    groups = [f"sup-{tag}", f"agent-{tag}", f"empty-{tag}"]
    loop = asyncio.new_event_loop()
    try:
        channels = loop.run_until_complete(members(layer, groups[:2]))
        client = _redis_client(layer)
        round_trips = []
        real_send = redis.connection.Connection.send_packed_command
        sends = [(group, {"type": "call.card", "n": n}) for n in range(3) for group in groups]

        def counting_send(connection, *args, **kwargs):
            round_trips.append(args)
            return real_send(connection, *args, **kwargs)

        import unittest.mock

        client.ping()  # connected: the connection's own handshake is not one of the round trips counted
        with unittest.mock.patch.object(redis.connection.Connection, "send_packed_command", counting_send):
            _group_send_pipelined(layer, client, sends)
        assert len(round_trips) == 2
        supervisors = loop.run_until_complete(received(layer, channels[groups[0]], 3))
        agent = loop.run_until_complete(received(layer, channels[groups[1]], 6))
        assert [m["n"] for m in supervisors] == [0, 1, 2]
        assert sorted(m["n"] for m in agent) == [0, 0, 1, 1, 2, 2]  # as a member of both groups
        loop.run_until_complete(layer.flush())
        client.close()
    finally:
        loop.close()


def test_it_reads_every_reply_of_a_round_trip_before_raising_an_error_reply():
    """The publisher's connection stays in step with Redis when one command of a batch fails."""
    from telephony.publish import _redis_client, _Wire

    layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
    wire = _Wire(_redis_client(layer))
    key = f"wire-{uuid.uuid4().hex}"
    try:
        wire.execute([("SET", key, "a string")])
        with pytest.raises(redis.ResponseError):
            wire.execute([("LPUSH", key, b"x"), ("GET", key), ("STRLEN", key)])  # LPUSH on a string: an error
        assert wire.execute([("GET", key), ("DEL", key)]) == [b"a string", 1]  # the next replies are its own
    finally:
        wire.client.delete(key)
        wire.close()


def test_it_connects_again_after_a_round_trip_that_failed():
    from telephony.publish import _redis_client, _Wire

    layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
    wire = _Wire(_redis_client(layer))
    try:
        assert wire.execute([("PING",)]) == [b"PONG"]
        wire._connection._sock.close()  # Redis went away under it
        with pytest.raises(redis.ConnectionError):
            wire.execute([("ECHO", "lost")])
        assert wire.execute([("ECHO", "back"), ("ECHO", 7), ("ECHO", 0.5)]) == [b"back", b"7", b"0.5"]
    finally:
        wire.close()


def test_it_answers_a_client_asked_of_a_closed_broker_connection_with_a_connection_error():
    """Celery ignores connection errors while it closes a lost connection, and exits on anything else.

    A Redis restart closed the worker's connection; closing its channel then restored its unacked
    messages, which asked for a client of the closed connection: an AttributeError, and the worker
    exited ("Unrecoverable error"), holding no PBX socket until restarted.
    """
    import redis
    from django.conf import settings
    from kombu import Connection

    connection = Connection(settings.REDIS_URL, transport="ctihub.lib.broker:Transport")
    channel = connection.default_channel
    channel._create_client()
    connection._close()
    assert redis.exceptions.ConnectionError in connection.connection_errors
    with pytest.raises(redis.exceptions.ConnectionError):
        channel._create_client()


def _comparable_task_message(raw: bytes) -> dict:
    """A task message less what differs from one publish to the next (ids) and the queue it was sent to."""
    import json

    message = json.loads(raw)
    for name in ("id", "root_id"):
        message["headers"][name] = "..."
    for name in ("correlation_id", "delivery_tag"):
        message["properties"][name] = "..."
    message["properties"]["delivery_info"]["routing_key"] = "..."
    return message


def test_it_builds_a_task_message_as_celerys_apply_async_would_push_it():
    """The CRM hand-off pushes its task's message itself (``ctihub.lib.broker``): the events worker must read it
    as one Celery queued, the ``call-events`` queue's priority included."""
    import base64
    import json

    from django.conf import settings

    from crm_sync.tasks import route_call_task, sync_call_task
    from ctihub.celery import app
    from ctihub.lib import broker

    assert broker.direct_queue(sync_call_task) == broker.direct_queue(route_call_task) == settings.CRM_EVENTS_QUEUE
    queue_name = f"test-unconsumed-{uuid.uuid4().hex}"
    with app.connection_for_write() as connection, connection.Producer() as producer:
        sync_call_task.apply_async(args=(428,), queue=queue_name, producer=producer)
        celerys = connection.default_channel.client.rpop(queue_name)
    app.amqp.queues.pop(queue_name, None)
    queue, task_id, ours = broker.task_message(sync_call_task, (428,))
    assert queue == settings.CRM_EVENTS_QUEUE
    assert json.loads(ours)["headers"]["id"] == task_id
    assert json.loads(ours)["properties"]["delivery_info"]["routing_key"] == settings.CRM_EVENTS_QUEUE
    assert _comparable_task_message(ours) == _comparable_task_message(celerys)
    assert json.loads(base64.b64decode(json.loads(ours)["body"]))[0] == [428]


def test_it_leaves_a_task_whose_message_needs_more_than_a_push_to_celery(monkeypatch):
    from celery import signals

    from crm_sync.tasks import sync_call_task
    from ctihub.lib import broker

    assert broker.direct_queue(sync_call_task) is not None

    def on_publish(**_kwargs):
        pass

    signals.before_task_publish.connect(on_publish)
    try:
        assert broker.direct_queue(sync_call_task) is None  # Celery would call the receiver: only it can
    finally:
        signals.before_task_publish.disconnect(on_publish)
    monkeypatch.setattr(broker, "_direct_queues", {})
    conf = sync_call_task.app.conf
    eager = conf.task_always_eager
    conf.task_always_eager = True  # apply_async would run it here and now
    try:
        assert broker.direct_queue(sync_call_task) is None
    finally:
        conf.task_always_eager = eager


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_it_runs_a_task_whose_message_was_pushed_without_apply_async(live_celery_worker):
    from celery.result import AsyncResult

    from ctihub.lib import broker
    from ctihub.lib.shared_redis import shared_redis

    account = make_account()
    make_call(account)
    queue, task_id, message = broker.task_message(ping_task, ())
    shared_redis().lpush(queue, message)
    assert AsyncResult(task_id).get(timeout=30) == {"pong": True, "calls": 1}


def test_it_sends_what_was_handed_to_the_publisher_before_the_process_exits():
    """The CRM hand-off leaves from the publisher's thread: a worker's warm shutdown must not drop it."""
    import os
    import subprocess
    import sys

    from django.conf import settings

    from ctihub.lib.shared_redis import shared_redis

    queue_name = f"test-unconsumed-{uuid.uuid4().hex}"
    script = (
        "import django; django.setup()\n"
        "from ctihub.lib import broker\n"
        "from ctihub.tasks import ping_task\n"
        "from telephony.publish import publisher\n"
        "found = broker._direct(ping_task)\n"
        f"broker._direct_queues[ping_task.name] = ({queue_name!r}, *found[1:])\n"
        "publisher.queue_tasks([(ping_task, ())])\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "ctihub.settings"}
    done = subprocess.run([sys.executable, "-c", script], cwd=settings.BASE_DIR, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    try:
        assert shared_redis().llen(queue_name) == 1
    finally:
        shared_redis().delete(queue_name)
