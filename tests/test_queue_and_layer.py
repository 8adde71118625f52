"""The real queue and the real channel layer: Celery over Redis, channels-redis."""

import asyncio
import uuid

import pytest
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
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "ctihub.channel_layer.BatchingRedisChannelLayer"

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
        real_execute = type(client.pipeline()).execute
        sends = [(group, {"type": "call.card", "n": n}) for n in range(3) for group in groups]

        def counting_execute(pipe, *args, **kwargs):
            round_trips.append(len(pipe.command_stack))
            return real_execute(pipe, *args, **kwargs)

        import unittest.mock

        with unittest.mock.patch.object(type(client.pipeline()), "execute", counting_execute):
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


def test_it_answers_a_client_asked_of_a_closed_broker_connection_with_a_connection_error():
    """Celery ignores connection errors while it closes a lost connection, and exits on anything else.

    A Redis restart closed the worker's connection; closing its channel then restored its unacked
    messages, which asked for a client of the closed connection: an AttributeError, and the worker
    exited ("Unrecoverable error"), holding no PBX socket until restarted.
    """
    import redis
    from django.conf import settings
    from kombu import Connection

    connection = Connection(settings.REDIS_URL, transport="ctihub.broker:Transport")
    channel = connection.default_channel
    channel._create_client()
    connection._close()
    assert redis.exceptions.ConnectionError in connection.connection_errors
    with pytest.raises(redis.exceptions.ConnectionError):
        channel._create_client()
