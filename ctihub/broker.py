"""Celery's Redis transport, with one publishing client per channel instead of one per message.

kombu's Redis channel builds a new ``redis.Redis`` for every message it publishes (``_put``), and
redis-py fills a table of some 170 response callbacks each time: a third of a millisecond of CPU
per task queued, paid by every live frame's CRM hand-off. A client is only a connection pool and
those callbacks, and it is safe to share between threads, so each channel keeps the one it made
(a new pool, after a fork or a reconnect, gets a new client). Consuming (BRPOP, the worker's event
loop) is unchanged. Selected by ``CELERY_BROKER_TRANSPORT`` (ctihub/settings.py).
"""

from __future__ import annotations

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
