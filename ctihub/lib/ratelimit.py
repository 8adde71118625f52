"""Rate limits of the public endpoints (retailCRM callbacks, recordUrl, Telepo webhook).

The same Redis token bucket as retailCRM's outbound limits
(``ctihub.lib.token_bucket.TAKE_TOKEN``, one Lua script, Redis's clock),
one bucket per caller: who the caller is, the endpoint's app says (retailCRM's
``clientId`` when it sends one, else its address: ``crm_sync.retailcrm.inbound_limit``;
a Telepo account). ``PUBLIC_RATE_LIMIT_PER_SECOND`` tokens a second, bursts up
to three times that; past it the answer is 429 with a JSON reason and
``Retry-After``. If Redis cannot be reached the request goes through (logged):
refusing retailCRM because our own Redis is down would only add an outage.

Use ``@rate_limited("name", caller_of)`` on a view function or a DRF view's method.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ctihub.lib.shared_redis import shared_redis as _redis
from ctihub.lib.token_bucket import TAKE_TOKEN

logger = logging.getLogger(__name__)

PREFIX = "ctihub:public:rate"
BURST_FACTOR = 3


TAKE_TOKEN_SHA = hashlib.sha1(TAKE_TOKEN.encode()).hexdigest()


_held = threading.local()


def _connection():
    """This thread's own connection to the shared Redis, for the rate limit's one command a request.

    redis-py's client (its pool, retry and observability layers around every command) cost twice
    the round trip itself; one click pays this (issue 16). The same server, timeouts and connection
    kind as the process's shared client (``shared_redis``), a new one after a fork.
    """
    client = _redis()
    held = getattr(_held, "connection", None)
    if held is None or held[0] is not client:
        if held is not None:
            held[1].disconnect()
        pool = client.connection_pool
        held = _held.connection = (client, pool.connection_class(**pool.connection_kwargs))
    return held[1]


# The EVALSHA of a (bucket, rate) as redis-py packs it: the same bytes every click of a caller.
_PACKED: dict[tuple[str, str, float], list[bytes]] = {}
MAX_PACKED_REMEMBERED = 1024


def _packed_take(connection, key: str, rate: float) -> list[bytes]:
    """redis-py's own packing of the rate limit's ``EVALSHA``, kept per bucket and rate (its encoder
    and packer were a third of ``take``'s Python, issue 16)."""
    found = _PACKED.get((TAKE_TOKEN_SHA, key, rate))
    if found is None:
        if len(_PACKED) >= MAX_PACKED_REMEMBERED:
            _PACKED.clear()
        found = _PACKED[(TAKE_TOKEN_SHA, key, rate)] = connection.pack_command(
            "EVALSHA", TAKE_TOKEN_SHA, 1, key, rate, rate * BURST_FACTOR, 60000)
    return found


def take(endpoint: str, caller: str, scale: int = 1, meanwhile=None) -> int:
    """0 when the caller may go on, else the milliseconds until it may (``scale`` times the usual rate).

    ``EVALSHA`` on this thread's connection; a Redis that does not know the script yet (started
    afresh, ``SCRIPT FLUSH``) gets it with ``EVAL``, which also loads it for the next ``EVALSHA``.
    A connection the server closed while it was idle (a restart) is noticed before the command is
    sent, as redis-py's pool does, and replaced; any other failure raises (``check`` lets the request
    through) and the connection starts afresh next time.

    ``meanwhile`` (no arguments, must not raise) runs after the command is sent and before its answer
    is read: work the request does whatever the answer (reading and validating its query), so the
    answer is usually waiting by then and the thread does not sleep on Redis. A thread that slept on
    each click's round trip cost daphne more CPU than the command itself (issue 16).
    """
    connection = _connection()
    rate = float(settings.PUBLIC_RATE_LIMIT_PER_SECOND * scale)
    key = f"{PREFIX}:{endpoint}:{caller}"
    try:
        if getattr(connection, "_sock", None) is not None:  # send_command connects one that is not
            try:
                if connection.can_read():  # readable while idle: closed by the server, or out of step
                    raise RedisConnectionError("the rate limit's connection has data")
            except (RedisConnectionError, RedisTimeoutError, OSError):
                connection.disconnect()
        connection.send_packed_command(_packed_take(connection, key, rate))
        if meanwhile is not None:
            meanwhile()
        try:
            wait_ms = connection.read_response()
        except NoScriptError:
            connection.send_command("EVAL", TAKE_TOKEN, 1, key, rate, rate * BURST_FACTOR, 60000)
            wait_ms = connection.read_response()
    except BaseException:
        connection.disconnect()  # an answer half read must not be the next request's
        raise
    return int(wait_ms)


def too_many(wait_ms: int) -> JsonResponse:
    response = JsonResponse(
        {"success": False, "reason": "too many requests: slow down and retry after Retry-After seconds"}, status=429
    )
    response["Retry-After"] = str(max(1, math.ceil(wait_ms / 1000)))
    return response


def check(request, endpoint: str, caller: str, scale: int = 1, meanwhile=None) -> JsonResponse | None:
    """The 429 answer if ``request`` is over its limit, else None.

    ``caller`` names the bucket (a clientId's digest, an address, the Telepo
    webhook's account); it must never be a secret itself. ``scale``
    multiplies the limit for a caller that speaks for many people at once.
    ``meanwhile``: see ``take`` (it may not run at all if Redis cannot be reached).
    """
    try:
        wait_ms = take(endpoint, caller, scale, meanwhile)
    except Exception:
        logger.warning("rate limit of %s not checked: Redis unavailable", endpoint, exc_info=True)
        return None
    if wait_ms:
        logger.info("rate limited %s for %s", endpoint, caller.split(":")[0])
        return too_many(wait_ms)
    return None


def rate_limited(endpoint: str, caller_of: Callable[[HttpRequest], str], meanwhile: str = ""):
    """Decorate a view function ``f(request, ...)`` or a method ``f(self, request, ...)``: each request
    counts against the bucket of ``caller_of(request)`` (see ``check``).

    ``meanwhile``, the name of a method of the view (``f(self, request)``, no side effects): run while
    Redis answers the rate limit (see ``take``), its result kept for the view (``early_result``). The
    429 still comes first: whatever the method found (an unknown clientId, a bad query) is answered only
    to a caller within its limit. If it raises, or Redis cannot be reached before it ran, the view does
    the work itself as before.
    """

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            request = args[1] if len(args) > 1 and not hasattr(args[0], "META") else args[0]

            def early() -> None:
                try:
                    request._ctihub_early = (meanwhile, getattr(args[0], meanwhile)(request))
                except Exception:  # noqa: BLE001, S110 - the view does it again and answers (or raises) as before
                    pass

            refused = check(request, endpoint, caller_of(request), meanwhile=early if meanwhile else None)
            return refused if refused is not None else view(*args, **kwargs)

        return wrapper

    return decorate


def early_result(request, name: str, otherwise):
    """What ``rate_limited(meanwhile=name)`` found for ``request`` (once), else ``otherwise()``."""
    found = getattr(request, "_ctihub_early", None)
    if found is None or found[0] != name:
        return otherwise()
    request._ctihub_early = None
    return found[1]
