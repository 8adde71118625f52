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
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"

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
