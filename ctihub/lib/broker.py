"""Celery's Redis transport, with one publishing client per channel instead of one per message.

kombu's Redis channel builds a new ``redis.Redis`` for every message it publishes (``_put``), and
redis-py fills a table of some 170 response callbacks each time: a third of a millisecond of CPU
per task queued, paid by every live frame's CRM hand-off. A client is only a connection pool and
those callbacks, and it is safe to share between threads, so each channel keeps the one it made
(a new pool, after a fork or a reconnect, gets a new client). Consuming (BRPOP, the worker's event
loop) is unchanged. Selected by ``CELERY_BROKER_TRANSPORT`` (ctihub/settings.py).
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _publishing_client = None

    def _get_pool(self, asynchronous=False):
        # A worker whose Redis went away closes its connection, then its channel, which restores the
        # messages it had not acked: that asks for a client, and kombu builds its pool from the closed
        # connection's settings (None), an AttributeError that Celery calls unrecoverable: the worker
        # exited on a Redis restart. As a connection error it is ignored and the worker reconnects.
        try:
            return super()._get_pool(asynchronous=asynchronous)
        except AttributeError as exc:
            raise redis.exceptions.ConnectionError("the broker connection is closed") from exc

    def _create_client(self, asynchronous=False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._publishing_client
        if client is None or client.connection_pool is not self.pool:
            client = self._publishing_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


# --- A task message pushed straight to its queue's list (the event path's CRM hand-off) -----------------
#
# Celery's ``apply_async`` costs 0.35-0.4 ms of CPU a task in a thread of its own and about three times that
# in the socket worker, whose threads share the GIL: routing, the producer pool, kombu's retry wrapper and
# ``publish``, then a round trip to Redis, for every change of every call. Its result is one JSON document
# LPUSHed to the list named after the queue. ``task_message`` builds that document with Celery's own
# protocol (``as_task_v2``: headers and body) in kombu's Redis envelope, and the publisher's thread pushes
# a batch of them in one pipeline (``telephony.publish``). Only for tasks whose message would be exactly
# that (``direct_queue``); any other keeps ``apply_async``.

# By task name: (its queue, the message's delivery mode, the depth of its arguments' repr), or None.
_direct_queues: dict[str, tuple[str, int, int] | None] = {}
_origin: tuple[int, str] | None = None


def direct_queue(task) -> str | None:
    """The Redis list ``apply_async`` would LPUSH ``task``'s message to, or None if it would do more.

    More is: another transport (kombu's own, a socket, Sentinel), a key prefix, TLS options, an exchange
    that routes (not Celery's direct one), a queue with a TTL or priorities, a task priority, eager mode,
    a compressor or a serializer other than JSON, or a receiver of Celery's publish signals.
    """
    found = _direct(task)
    return found and found[0]


def _direct(task) -> tuple[str, int, int] | None:
    from celery import signals

    if signals.before_task_publish.receivers or signals.after_task_publish.receivers:
        return None
    name = task.name
    if name not in _direct_queues:  # Celery's settings are slow to read: once a task
        _direct_queues[name] = _direct_queue(task)
    return _direct_queues[name]


def _direct_queue(task) -> tuple[str, int, int] | None:
    from kombu.entity import DELIVERY_MODES

    app = task.app
    conf = app.conf
    if (conf.broker_transport or "") != f"{__name__}:Transport" or conf.task_always_eager:
        return None
    if urlparse(conf.broker_url or "").scheme not in ("redis", "rediss") or conf.broker_use_ssl:
        return None
    if (conf.broker_transport_options or {}).get("global_keyprefix"):
        return None
    if conf.task_serializer != "json" or conf.task_compression or conf.task_default_priority is not None:
        return None
    if task.priority is not None or conf.task_protocol != 2 or conf.task_send_sent_event:
        return None
    if getattr(task, "expires", None) or getattr(task, "time_limit", None) or getattr(task, "soft_time_limit", None):
        return None
    options = app.amqp.router.route({}, task.name, (), {}, task)
    queue = options.get("queue")
    if queue is None or set(options) - {"queue"} or queue.exchange.type != "direct":
        return None
    if queue.expires or queue.message_ttl or queue.max_priority or queue.max_length:
        return None
    delivery_mode = queue.exchange.delivery_mode or conf.task_default_delivery_mode
    return queue.name, DELIVERY_MODES.get(delivery_mode, delivery_mode), conf.task_repr_maxlevels


def task_message(task, args: tuple) -> tuple[str, str, bytes]:
    """(its queue, task id, the message) as ``task.apply_async(args)`` would LPUSH it to the queue's list.

    For a task ``direct_queue`` names a queue for."""
    import base64

    from celery.utils.saferepr import saferepr
    from kombu.utils.json import dumps
    from kombu.utils.uuid import uuid

    queue, delivery_mode, repr_maxlevels = _direct(task)
    # A shared task is a proxy that looks the task up again on every attribute read: once a message.
    task = task._get_current_object() if hasattr(type(task), "_get_current_object") else task
    app = task.app
    amqp = app.amqp
    task_id = uuid()
    parent = app.current_worker_task  # as ``send_task``: a task queued by a running task is its child
    message = amqp.as_task_v2(
        task_id, task.name, args, {}, reply_to=app.thread_oid, origin=_origin_name(),
        root_id=parent and (parent.request.root_id or parent.request.id), parent_id=parent and parent.request.id,
        ignore_result=task.ignore_result,
        # What as_task_v2 would write, without reading Celery's settings twice a message. The event path's
        # arguments are a few ids, whose saferepr is their repr (the slow generic walk is for the rest).
        argsrepr=(repr(args) if len(args) < 8 and all(type(arg) is int for arg in args)
                  else saferepr(args, amqp.argsrepr_maxsize, maxlevels=repr_maxlevels)),
        kwargsrepr=saferepr({}, amqp.kwargsrepr_maxsize, maxlevels=repr_maxlevels),
    )
    envelope = {
        "body": base64.b64encode(dumps(message.body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": message.headers,
        "properties": {
            **message.properties,
            "delivery_mode": delivery_mode,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid(),
        },
    }
    return queue, task_id, dumps(envelope).encode()


def _origin_name() -> str:
    """Celery's ``anon_nodename()`` (it asks the system's host name each time): once a process."""
    global _origin
    if _origin is None or _origin[0] != os.getpid():
        from celery.utils.nodenames import anon_nodename

        _origin = (os.getpid(), anon_nodename())
    return _origin[1]


def task_messages(tasks: list[tuple[object, tuple]]) -> dict[str, list[bytes]]:
    """The tasks' messages by queue, in the order given: ``LPUSH queue *messages`` queues them.

    For tasks ``direct_queue`` names a list for (the caller checked). Consumers BRPOP the lists' other
    end, so each list's messages are taken in the order given."""
    by_queue: dict[str, list[bytes]] = {}
    for task, args in tasks:
        queue, _task_id, message = task_message(task, args)
        by_queue.setdefault(queue, []).append(message)
    return by_queue


_pusher: tuple[int, str, redis.Redis] | None = None


_app = None  # the project's Celery app (``use_app``): its broker is where the messages go


def use_app(app) -> None:
    """Push task messages to ``app``'s broker (the project's Celery module says which app at its start)."""
    global _app
    _app = app


def _broker_url() -> str:
    return _app.conf.broker_url


def push_task_messages(tasks: list[tuple[object, tuple]]) -> None:
    """LPUSH the tasks' messages (``task_messages``) in one round trip, with a client of the broker's."""
    global _pusher
    url = _broker_url()
    if _pusher is None or _pusher[0] != os.getpid() or _pusher[1] != url:
        # A client of its own: kombu's channel clients belong to its connection pool's life cycle.
        _pusher = (os.getpid(), url, redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))
    pipe = _pusher[2].pipeline(transaction=False)
    for queue, messages in task_messages(tasks).items():
        pipe.lpush(queue, *messages)
    pipe.execute()


_SAME_REDIS = ("host", "port", "path", "db", "username", "password")


_same_redis: dict[tuple[int, str], bool] = {}


def same_redis(client: redis.Redis) -> bool:
    """Whether ``client`` talks to the broker's Redis database (then it may push task messages)."""
    url = _broker_url()
    key = (id(client.connection_pool), url)
    if key not in _same_redis:
        from redis.connection import parse_url

        same = urlparse(url).scheme in ("redis", "rediss")
        if same:
            wanted = {"port": 6379, "db": 0, **parse_url(url)}
            mine = {"port": 6379, "db": 0, **client.connection_pool.connection_kwargs}
            same = all(str(wanted.get(name) or "") == str(mine.get(name) or "") for name in _SAME_REDIS)
        _same_redis.clear()  # one client asks (the publisher's): a new one replaces it
        _same_redis[key] = same
    return _same_redis[key]
