"""The hand-off: each committed change of calls queues what retailCRM must hear (Celery tasks), or marks
the calls no CRM listens to skipped. Runs on the committing thread (``telephony.plugins.calls_committed``)."""

from __future__ import annotations

from django.db import connection

from crm_sync.domain.common import integrations_for
from crm_sync.models import CrmCallSync, RetailCrmIntegration
from ctihub.lib.brief_cache import BriefCache
from ctihub.lib.queueing import enqueue
from telephony.models import Call
from telephony.queueing import enqueue_soon


def _enqueue(task, *args, countdown: float | None = None) -> bool:  # tests patch it here
    """Queue a task; at once off this thread (``enqueue_soon``): the event path hands calls over here."""
    if countdown is None:
        return enqueue_soon(task, *args)
    return enqueue(task, *args, countdown=countdown)


# Which integrations serve an account: the event path asks for every burst of frames.
SERVING = BriefCache("retailcrm-integrations-serving-account", watch=(RetailCrmIntegration,))


def serving_integrations(account_id: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ids of the enabled integrations serving the account, those of them that route to managers)."""
    def load():
        rows = list(integrations_for(account_id).values_list("id", "manager_routing"))
        return tuple(pk for pk, _ in rows), tuple(pk for pk, routes in rows if routes)

    return SERVING.get(account_id, load)


def call_changed(call_id: int, version: int) -> None:
    """Called after a call's transaction commits. Calls no CRM listens to are marked skipped."""
    call = Call.objects.filter(pk=call_id).first()
    if call is not None:
        calls_changed([call])


def calls_changed(calls: list[Call]) -> None:
    """After a burst of call changes commits: each call once, as the domain left it.

    Queues what retailCRM must hear (start and end events, responsible-manager routing);
    calls no CRM listens to are marked skipped, all in one statement.
    """
    from crm_sync import tasks

    skipped = []
    for call in calls:
        integration_ids, routing_ids = serving_integrations(call.account_id)
        if not integration_ids:
            if call.crm_sync_state != Call.CrmSync.SKIPPED:
                skipped.append(call.pk)
            continue
        if (routing_ids and call.state == Call.State.RINGING and call.direction == Call.Direction.INBOUND
                and call.terminal_id):
            routed = RetailCrmIntegration.objects.filter(
                pk__in=routing_ids, shared_lines=call.terminal_id
            ).values_list("id", flat=True)
            for integration_id in routed:
                _enqueue(tasks.route_call_task, integration_id, call.pk)
        if call.state in (Call.State.TALKING, Call.State.HELD) and _start_events_settled(call.pk, integration_ids):
            continue  # answered, held, resumed: nothing retailCRM hears about
        _enqueue(tasks.sync_call_task, call.pk)
    if skipped:  # (those the domain read as skipped already need no statement)
        Call.objects.filter(pk__in=skipped, crm_sync_state=Call.CrmSync.PENDING).update(
            crm_sync_state=Call.CrmSync.SKIPPED
        )


def _start_events_settled(call_id: int, integration_ids: list[int]) -> bool:
    """Every integration has sent the call's start event, or skipped its events.

    In SQL: asked on every answered frame, and Django compiled this count for 0.5 ms of CPU, five
    times what running it costs."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*) FROM {connection.ops.quote_name(CrmCallSync._meta.db_table)} WHERE call_id = %s"
            f" AND integration_id IN ({', '.join(['%s'] * len(integration_ids))})"
            " AND (in_event_sent_at IS NOT NULL OR events_skipped <> '')",
            [call_id, *integration_ids])
        return cursor.fetchone()[0] == len(integration_ids)
