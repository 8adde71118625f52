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
        for groups, message in messages:
            for group in groups:
                try:
                    await layer.group_send(group, message)
                except Exception:  # a card not pushed is re-sent by the next snapshot; never crash the caller
                    logger.exception("could not publish to %s", group)


publisher = _Publisher()


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
