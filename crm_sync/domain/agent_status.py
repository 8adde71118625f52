"""Two-way status: an agent's status set in ctihub (the console) reaches retailCRM
(``POST /api/v5/users/{id}/status``); the one retailCRM sent us (changeUserStatusUrl) is not sent back.

``status_changed`` hears ``accounts.signals.agent_status_changed`` (after commit) and queues one
``push_agent_status_task`` per agent however many changes come before it runs (``PENDING_KEY``); the task
reads the agent's status when it runs, so only the latest leaves: last write wins. One task at a time
per agent sends (``SENDING_KEY``), so two tasks cannot deliver an older status after a newer one.

No echo: a change whose source is retailCRM queues nothing, and is remembered (``FROM_CRM_KEY``) so a
task queued by an earlier console change, running after it, does not send retailCRM its own status.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from accounts.models import Agent
from crm_sync.domain.common import client_for
from crm_sync.models import RetailCrmIntegration
from crm_sync.retailcrm.client import RetailCrmError

logger = logging.getLogger(__name__)

RETAILCRM_SOURCE = "retailcrm"  # what changeUserStatusUrl passes to set_agent_status
PENDING_KEY = "ctihub:retailcrm:status-pending:{}"
PENDING_TTL = 60  # s: a task lost before it ran blocks the next change's for this long at most
SENDING_KEY = "ctihub:retailcrm:status-sending:{}"
SENDING_LEASE_MS = 90_000  # more than one integration's request can take (30 s for a token, then the answer)
FROM_CRM_KEY = "ctihub:retailcrm:status-from-crm:{}"
FROM_CRM_TTL = 3600


class StatusBusy(Exception):
    """Another task is sending this agent's status: try again shortly (it may have read an older one)."""


@dataclass
class StatusReport:
    status: str = ""
    sent: list[int] = field(default_factory=list)  # integration ids retailCRM accepted it from
    retry: list[int] = field(default_factory=list)  # retailCRM unavailable: try these again
    failed: list[int] = field(default_factory=list)  # refused: trying again would get the same answer
    skipped: str = ""  # why nothing was sent, if nothing was


def _redis():
    from crm_sync.retailcrm.ratelimit import _redis

    return _redis()


def status_changed(agent: Agent, status: str, source: str) -> None:
    """After an agent's status committed: queue its push to retailCRM, unless retailCRM set it."""
    from django.db import transaction

    if source == RETAILCRM_SOURCE:
        try:
            _redis().set(FROM_CRM_KEY.format(agent.pk), status, ex=FROM_CRM_TTL)
        except Exception:
            logger.warning("could not note agent %s's status from retailCRM", agent.pk, exc_info=True)
        return
    if not agent.retailcrm_user_id:
        return  # retailCRM does not know this agent
    # The signal comes after commit already; on_commit keeps it so if a caller ever sends it inside one.
    transaction.on_commit(lambda: _queue(agent.pk))


def _queue(agent_id: int) -> None:
    from crm_sync import tasks
    from crm_sync.domain import handoff

    try:
        r = _redis()
        r.delete(FROM_CRM_KEY.format(agent_id))  # the status is ctihub's now: retailCRM must hear it
        if not r.set(PENDING_KEY.format(agent_id), "1", nx=True, ex=PENDING_TTL):
            return  # a queued task will read this status when it runs
    except Exception:
        logger.warning("could not coalesce agent %s's status; queueing its push anyway", agent_id, exc_info=True)
    if not handoff._enqueue(tasks.push_agent_status_task, agent_id):
        try:
            _redis().delete(PENDING_KEY.format(agent_id))  # so the next change queues one
        except Exception:
            pass


def push_agent_status(agent_id: int, integration_ids: list[int] | None = None) -> StatusReport:
    """Send the agent's current status to each enabled integration (or those of ``integration_ids``)."""
    report = StatusReport()
    r = _redis()
    r.delete(PENDING_KEY.format(agent_id))  # a change committed from now on queues another task
    token = uuid.uuid4().hex
    sending = SENDING_KEY.format(agent_id)
    if not r.set(sending, token, nx=True, px=SENDING_LEASE_MS):
        raise StatusBusy(f"agent {agent_id}'s status is being sent")
    try:
        _send(agent_id, integration_ids, report)
    finally:
        r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
               1, sending, token)
    return report


def _send(agent_id: int, integration_ids: list[int] | None, report: StatusReport) -> None:
    agent = Agent.objects.filter(pk=agent_id).only("pk", "status", "retailcrm_user_id").first()
    if agent is None or not agent.retailcrm_user_id:
        report.skipped = "no retailCRM user id"
        return
    report.status = agent.status
    if _redis().get(FROM_CRM_KEY.format(agent_id)) == agent.status.encode():
        report.skipped = "retailCRM set this status"
        return
    integrations = RetailCrmIntegration.objects.filter(enabled=True).order_by("pk")
    if integration_ids is not None:
        integrations = integrations.filter(pk__in=integration_ids)
    for integration in integrations:
        if agent.retailcrm_user_id in (integration.not_exist_user_ids or []):
            continue  # retailCRM said at registration it has no such user: a sure 404
        try:
            client_for(integration).user_status(agent.retailcrm_user_id, agent.status)
        except RetailCrmError as exc:
            if exc.retryable:
                report.retry.append(integration.pk)
                logger.info("retailCRM %r unavailable for agent %s's status: %s", integration.name, agent_id, exc)
            else:
                report.failed.append(integration.pk)
                logger.warning("retailCRM %r (integration %s) refused agent %s's status %r (retailCRM user %s): %s",
                               integration.name, integration.pk, agent_id, agent.status, agent.retailcrm_user_id,
                               exc)
            continue
        report.sent.append(integration.pk)
