"""Prometheus metrics at ``/metrics``, the same from every process.

Events are applied in Celery workers (socket listeners, tasks) and in daphne
(the Telepo webhook), and a scrape reaches one daphne process. So counters and
the pop-up latency histogram live in Redis (one ``HINCRBY`` per observation,
shared by every process and surviving restarts of any one of them) and a
custom collector turns them into Prometheus families at scrape time, together
with what the apps read from the database then (``add_collector``: listeners by
state, the retailCRM upload outbox). prometheus_client's own multiprocess mode
was not used: it needs ``PROMETHEUS_MULTIPROC_DIR`` shared by all processes (not
true across containers) and its dead-process cleanup does not fit Celery's thread
pool.

Recording never fails the caller: a Redis error is logged and the observation lost.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from ctihub.lib.shared_redis import shared_redis

logger = logging.getLogger(__name__)

PREFIX = "ctihub:metrics"
EVENTS_KEY = f"{PREFIX}:events"  # field: account kind
CRM_ERRORS_KEY = f"{PREFIX}:crm_errors"  # field: error kind
POPUP_KEY = f"{PREFIX}:popup"  # fields: bucket bounds, "count", "sum"
# Seconds from a frame reaching ctihub to its card leaving for the browsers.
POPUP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Seconds a retailCRM request waited for a token of the shared rate limit, by priority (high: call events).
TOKEN_WAIT_KEY = f"{PREFIX}:crm_token_wait:{{}}"  # fields: bucket bounds, "count", "sum", "waited", "max"
TOKEN_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
TOKEN_WAIT_PRIORITIES = ("high", "low")
_KEEP_MAX = "local m = tonumber(redis.call('HGET', KEYS[1], 'max') or '0') " \
            "if tonumber(ARGV[1]) > m then redis.call('HSET', KEYS[1], 'max', ARGV[1]) end"

_redis = shared_redis


def _safely(operation) -> None:
    try:
        operation(_redis())
    except Exception:  # metrics must never break the event path
        logger.warning("metrics: could not record an observation", exc_info=True)


def event_applied(account_kind: str) -> None:
    events_applied([account_kind])


def events_applied(account_kinds: list[str]) -> None:
    """One round trip for a whole burst of applied updates."""
    counts = Counter(kind or "unknown" for kind in account_kinds)

    def record(r):
        pipe = r.pipeline(transaction=False)
        for kind, n in counts.items():
            pipe.hincrby(EVENTS_KEY, kind, n)
        pipe.execute()

    if counts:
        _safely(record)


def crm_error(kind: str) -> None:
    _safely(lambda r: r.hincrby(CRM_ERRORS_KEY, kind, 1))


def popup_latency(seconds: float, cards: int = 1, account_kinds: list[str] | None = None) -> None:
    """``cards`` cards that left ``seconds`` after their frames came in (and, if given, the applied
    updates' account kinds, counted in the same round trip)."""
    seconds = max(0.0, seconds)
    counts = Counter(kind or "unknown" for kind in account_kinds or ())

    def record(r):
        pipe = r.pipeline(transaction=False)
        for kind, n in counts.items():
            pipe.hincrby(EVENTS_KEY, kind, n)
        for bound in POPUP_BUCKETS:
            if seconds <= bound:
                pipe.hincrby(POPUP_KEY, repr(bound), cards)
        pipe.hincrby(POPUP_KEY, "count", cards)
        pipe.hincrbyfloat(POPUP_KEY, "sum", seconds * cards)
        pipe.execute()

    _safely(record)


def crm_token_wait(priority: str, seconds: float) -> None:
    """A retailCRM request of ``priority`` took its token after ``seconds`` (0: at once)."""
    key = TOKEN_WAIT_KEY.format(priority)

    def record(r):
        pipe = r.pipeline(transaction=False)
        for bound in TOKEN_WAIT_BUCKETS:
            if seconds <= bound:
                pipe.hincrby(key, repr(bound), 1)
        pipe.hincrby(key, "count", 1)
        if seconds > 0:
            pipe.hincrby(key, "waited", 1)
            pipe.hincrbyfloat(key, "sum", seconds)
            pipe.eval(_KEEP_MAX, 1, key, repr(seconds))
        pipe.execute()

    _safely(record)


def crm_token_waits(priority: str) -> dict[str, float]:
    """What ``crm_token_wait`` recorded for ``priority``: requests, how many waited, total and longest wait (s)."""
    values = _read_hash(TOKEN_WAIT_KEY.format(priority))
    return {name: float(values.get(name, 0)) for name in ("count", "waited", "sum", "max")}


_recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics")
# Observations of the event path wait this long in the process and go to Redis together: one round
# trip (a pipeline of a dozen HINCRBYs) per frame was a tenth of the worker's CPU per live frame.
FLUSH_SECONDS = 0.5
_pending_lock = threading.Lock()
_pending_events: Counter = Counter()
_pending_buckets: Counter = Counter()  # bucket bound (and "count") -> cards
_pending_sum = 0.0
_flush_scheduled = False


def popup_latency_later(seconds: float, cards: int = 1, account_kinds: list[str] | None = None) -> None:
    """``popup_latency`` off the calling thread, and with the observations of the next ``FLUSH_SECONDS``:
    the publisher's event loop must not wait on Redis, nor each frame pay a round trip.

    The event path gives its burst's ``account_kinds`` here too (the events-applied counter)."""
    global _pending_sum, _flush_scheduled
    seconds = max(0.0, seconds)
    with _pending_lock:
        _pending_events.update(kind or "unknown" for kind in account_kinds or ())
        for bound in POPUP_BUCKETS:
            if seconds <= bound:
                _pending_buckets[repr(bound)] += cards
        _pending_buckets["count"] += cards
        _pending_sum += seconds * cards
        if _flush_scheduled:
            return
        _flush_scheduled = True
    _recorder.submit(_flush_later)


def _flush_later() -> None:
    global _pending_sum, _flush_scheduled
    time.sleep(FLUSH_SECONDS)
    with _pending_lock:
        events, buckets, total = dict(_pending_events), dict(_pending_buckets), _pending_sum
        _pending_events.clear()
        _pending_buckets.clear()
        _pending_sum, _flush_scheduled = 0.0, False

    def record(r):
        pipe = r.pipeline(transaction=False)
        for kind, n in events.items():
            pipe.hincrby(EVENTS_KEY, kind, n)
        for field, n in buckets.items():
            pipe.hincrby(POPUP_KEY, field, n)
        pipe.hincrbyfloat(POPUP_KEY, "sum", total)
        pipe.execute()

    _safely(record)


def _read_hash(key: str) -> dict[str, str]:
    try:
        return {k.decode(): v.decode() for k, v in _redis().hgetall(key).items()}
    except Exception:
        logger.warning("metrics: could not read %s", key, exc_info=True)
        return {}


class HubCollector:
    """Everything /metrics shows, read when Prometheus scrapes."""

    def collect(self):
        events = CounterMetricFamily(
            "ctihub_call_events_applied", "Call updates that changed a call, by PBX account kind.", labels=["account_kind"]
        )
        for kind, value in sorted(_read_hash(EVENTS_KEY).items()):
            events.add_metric([kind], float(value))
        yield events

        errors = CounterMetricFamily("ctihub_crm_errors", "Failed retailCRM requests, by kind of error.", labels=["kind"])
        for kind, value in sorted(_read_hash(CRM_ERRORS_KEY).items()):
            errors.add_metric([kind], float(value))
        yield errors

        popup = _read_hash(POPUP_KEY)
        histogram = HistogramMetricFamily(
            "ctihub_popup_latency_seconds", "From a PBX frame reaching ctihub to its call card being published."
        )
        count = float(popup.get("count", 0))
        buckets = [(repr(bound), float(popup.get(repr(bound), 0))) for bound in POPUP_BUCKETS] + [("+Inf", count)]
        histogram.add_metric([], buckets, float(popup.get("sum", 0)))
        yield histogram

        waits = HistogramMetricFamily(
            "ctihub_crm_token_wait_seconds",
            "How long retailCRM requests waited for the shared rate limit, by priority (high: call events).",
            labels=["priority"],
        )
        for priority in TOKEN_WAIT_PRIORITIES:
            values = _read_hash(TOKEN_WAIT_KEY.format(priority))
            count = float(values.get("count", 0))
            buckets = [(repr(b), float(values.get(repr(b), 0))) for b in TOKEN_WAIT_BUCKETS] + [("+Inf", count)]
            waits.add_metric([priority], buckets, float(values.get("sum", 0)))
        yield waits

        for collect in _collectors:
            yield from collect()


# What the apps add (from their AppConfig.ready()): each a function yielding metric families, read at
# scrape time after the hub's own, in the order added. The base package imports no app, so what only an
# app knows (its tables: listeners by state, the upload outbox) is theirs to collect.
_collectors: list[Callable[[], Iterable[Metric]]] = []


def add_collector(collect: Callable[[], Iterable[Metric]]) -> None:
    """Have ``/metrics`` show the families ``collect()`` yields (once, however often it is added)."""
    if collect not in _collectors:
        _collectors.append(collect)


def render() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector())
    return generate_latest(registry)


@require_GET
def metrics_view(request):
    """``/metrics``; with METRICS_TOKEN set, only for ``Authorization: Bearer <token>``.

    Without a token it is refused unless METRICS_PUBLIC opens it (the default only with DEBUG): a
    production hub that forgot its token must not show its traffic and integrations to anyone.
    """
    token = settings.METRICS_TOKEN
    if not token and not settings.METRICS_PUBLIC:
        return JsonResponse({"error": "/metrics is closed: set METRICS_TOKEN (or METRICS_PUBLIC=true)"}, status=403)
    if token:
        offered = request.headers.get("Authorization", "")
        if not hmac.compare_digest(offered.encode(), f"Bearer {token}".encode()):
            return JsonResponse({"error": "a bearer token is required"}, status=401,
                                headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
