"""Celery tasks of the CRM side: small, id in, a call into ``crm_sync.domain``.

Retry policy: a task retries itself a few times with backoff when retailCRM is
unavailable; past that, the periodic ``sweep_task`` (``CELERY_BEAT_SCHEDULE``)
picks the work up again from the database, which is the record of what is left
to do, so an outage of any length only delays it.
"""

from __future__ import annotations

import logging
import uuid

import redis
from celery import shared_task

from crm_sync import domain as crm_domain
from crm_sync.claims import CLAIM_LEASE, keeper
from crm_sync.domain import handoff
from crm_sync.models import RetailCrmIntegration
from crm_sync.retailcrm.client import RetailCrmError

logger = logging.getLogger(__name__)

SELF_RETRIES = 6  # 2 + 4 + ... + 64 s of retries before the sweep takes over
BUSY_RETRIES = 30
BUSY_COUNTDOWN = 1.0
DRAIN_KEY = "ctihub:retailcrm:drain-scheduled:{}"
REGISTER_KEY = "ctihub:retailcrm:register-pending:{}"
REGISTER_DEBOUNCE = 2.0
# A finished call's upload waits this long for the calls that end after it: one request carries them all
# (up to 50). At 15 calls ending a second, one upload a second instead of fifteen, so the uploads leave
# the call events retailCRM's telephony budget (they share it).
UPLOAD_GATHER_SECONDS = 1.0
# One drain of an integration's outbox at a time: a second one would only tie up another worker thread
# waiting for the same tokens (uploads wait for call events, see ``ratelimit``).
# A lease, renewed while the drain runs (``claims.keeper``): a worker killed in the middle of a drain
# holds the outbox back for CLAIM_LEASE at most.
DRAINING_KEY = "ctihub:retailcrm:draining:{}"
DRAIN_LEASE_MS = int(CLAIM_LEASE.total_seconds() * 1000)


@shared_task(bind=True, ignore_result=True)
def sync_call_task(self, call_id: int) -> None:
    """The call's due events, then a finished call into the outbox and its upload."""
    try:
        report = crm_domain.sync_call(call_id)
    except crm_domain.EventsBusy:
        # The holder may have read the call before this change committed: look again shortly.
        if self.request.retries < BUSY_RETRIES:
            raise self.retry(countdown=BUSY_COUNTDOWN, max_retries=BUSY_RETRIES)
        logger.warning("call %s: events claim stayed busy; the sweep will finish", call_id)
        return
    except crm_domain.RetryLater as exc:
        if self.request.retries < SELF_RETRIES:
            raise self.retry(countdown=exc.delay, max_retries=SELF_RETRIES)
        logger.warning("call %s: retailCRM still unavailable (%s); the sweep will retry", call_id, exc)
        return
    for integration_id in report.outboxed:
        schedule_drain(integration_id, UPLOAD_GATHER_SECONDS)


@shared_task(ignore_result=True)
def upload_calls_task(integration_id: int) -> None:
    """Drain the integration's outbox; when retailCRM is unavailable, schedule one delayed drain.

    When another drain of this outbox is running, it may be just finishing and miss the calls that
    queued this one: look again shortly rather than leave them to the sweep.
    """
    from crm_sync.retailcrm.ratelimit import _redis

    token = uuid.uuid4().hex
    key = DRAINING_KEY.format(integration_id)
    try:
        mine = _redis().set(key, token, nx=True, px=DRAIN_LEASE_MS)
    except Exception:
        logger.warning("could not take the drain lock; draining anyway", exc_info=True)
        mine, key = True, None
    if not mine:
        schedule_drain(integration_id, UPLOAD_GATHER_SECONDS)
        return
    try:
        if key is None:
            report = crm_domain.upload_outbox(integration_id)
        else:
            with keeper.keep(f"the drain lock of integration {integration_id}",
                             lambda: _renew_drain_lock(key, token)):
                report = crm_domain.upload_outbox(integration_id)
    except crm_domain.RetryLater as exc:
        schedule_drain(integration_id, exc.delay)
        return
    finally:
        if key is not None:
            _release_drain_lock(key, token)
    if report.batches:
        logger.info("retailCRM upload for integration %s: %s", integration_id, report)


_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


def _renew_drain_lock(key: str, token: str) -> None:
    from crm_sync.retailcrm.ratelimit import _redis

    if not _redis().eval(_RENEW, 1, key, token, DRAIN_LEASE_MS):
        # Lapsed (the keeper was held back past the lease) and maybe taken: the rows' own claims still
        # keep two drains from uploading the same call.
        logger.warning("the drain lock %s was no longer ours", key)


def _release_drain_lock(key: str, token: str) -> None:
    from crm_sync.retailcrm.ratelimit import _redis

    try:
        _redis().eval(_RELEASE, 1, key, token)
    except Exception:  # it lapses after DRAIN_LEASE_MS
        logger.warning("could not release the drain lock", exc_info=True)


def schedule_drain(integration_id: int, delay: float) -> None:
    """One pending delayed drain per integration, however many calls ended during an outage."""
    from crm_sync.retailcrm.ratelimit import _redis

    try:
        first = _redis().set(DRAIN_KEY.format(integration_id), "1", nx=True, px=max(1, int(delay * 1000)))
    except Exception:
        logger.warning("could not schedule a drain; the sweep will", exc_info=True)
        return
    if first:
        upload_calls_task.apply_async((integration_id,), countdown=delay)


@shared_task(bind=True, ignore_result=True)
def register_integration_task(self, integration_id: int) -> None:
    from crm_sync.retailcrm.ratelimit import _redis

    try:
        # Changes committed from now on queue a new registration.
        _redis().delete(REGISTER_KEY.format(integration_id))
    except Exception:
        logger.warning("could not clear the registration debounce key", exc_info=True)
    integration = RetailCrmIntegration.objects.filter(pk=integration_id).first()
    if integration is None:
        return
    try:
        crm_domain.register_integration(integration)
    except RetailCrmError as exc:
        if exc.retryable and self.request.retries < SELF_RETRIES:
            raise self.retry(countdown=crm_domain.backoff(self.request.retries + 1), max_retries=SELF_RETRIES)
        logger.warning("registering integration %s failed: %s", integration_id, exc)


def queue_registration(integration_id: int) -> None:
    """Re-register soon; several edits in a row (an admin form with inlines) make one request."""
    from crm_sync.retailcrm.ratelimit import _redis

    try:
        if not _redis().set(REGISTER_KEY.format(integration_id), "1", nx=True, ex=60):
            return
    except Exception:
        logger.warning("could not debounce a registration; sending it anyway", exc_info=True)
    handoff._enqueue(register_integration_task, integration_id, countdown=REGISTER_DEBOUNCE)


@shared_task(bind=True, ignore_result=True)
def push_agent_status_task(self, agent_id: int, integration_ids: list[int] | None = None) -> None:
    """The agent's status as it is now to retailCRM (``crm_domain.agent_status``); the integrations that were
    unavailable are tried again with backoff, alone. No sweep backs it: the agent's next change sends
    their status again. On the default queue: it never holds a call-events worker's thread."""
    from crm_sync.domain import agent_status

    try:
        report = agent_status.push_agent_status(agent_id, integration_ids)
    except agent_status.StatusBusy:
        if self.request.retries < BUSY_RETRIES:
            raise self.retry(countdown=BUSY_COUNTDOWN, max_retries=BUSY_RETRIES)
        logger.warning("agent %s: another task kept sending their status; giving up on this one", agent_id)
        return
    except redis.RedisError as exc:  # the coalescing and the one-sender lease live there (and the rate limit)
        if self.request.retries < SELF_RETRIES:
            raise self.retry(countdown=crm_domain.backoff(self.request.retries + 1), max_retries=SELF_RETRIES)
        logger.warning("agent %s's status not sent: Redis unavailable (%s)", agent_id, exc)
        return
    if report.retry:
        if self.request.retries < SELF_RETRIES:
            raise self.retry(args=(agent_id, report.retry), countdown=crm_domain.backoff(self.request.retries + 1),
                             max_retries=SELF_RETRIES)
        logger.warning("agent %s's status %r not sent: retailCRM integrations %s still unavailable",
                       agent_id, report.status, report.retry)


@shared_task(ignore_result=True)
def route_call_task(integration_id: int, call_id: int) -> None:
    crm_domain.route_call(integration_id, call_id)


@shared_task(ignore_result=True)
def bench_floor_event_task(integration_id: int, event: dict) -> None:
    """The floor of a call event's cost for ``bench.crm_event_latency``: a task that sends one event and
    does nothing else (no call, no claim, no bookkeeping). Refused unless ``BENCH_FLOORS`` is on."""
    from django.conf import settings

    if not settings.BENCH_FLOORS:
        logger.warning("bench_floor_event_task refused: BENCH_FLOORS is off")
        return
    integration = RetailCrmIntegration.objects.get(pk=integration_id)
    crm_domain.client_for(integration).call_event(event)


@shared_task(ignore_result=True)
def sweep_task() -> dict:
    """Beat: re-queue what lost tasks or outages left (see ``crm_domain.sweep``)."""
    report = crm_domain.sweep()
    for call_id in report.calls:
        sync_call_task.delay(call_id)
    for integration_id in report.integrations:
        upload_calls_task.delay(integration_id)
    return {"calls": len(report.calls), "integrations": len(report.integrations)}
