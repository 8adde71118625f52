"""The periodic catch-up: what lost tasks or an outage left (syncs, hangup events, due outboxes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from crm_sync.domain.common import ACTIVE_STATES
from crm_sync.domain.events import START_EVENT_STALE_AFTER
from crm_sync.domain.outbox import _due_outbox
from crm_sync.models import CrmCallSync, RetailCrmIntegration
from telephony.models import Call

# Sweep: calls whose tasks were lost are picked up once they are this old...
SWEEP_GRACE = timedelta(seconds=60)
# ...but a call whose start event is still worth sending (it is live, or ended less than
# START_EVENT_STALE_AFTER ago) once it has not changed for this long: its task died with the
# broker (a Redis restart) and waiting SWEEP_GRACE would make the event stale, and its hangup with it.
START_EVENT_SWEEP_GRACE = timedelta(seconds=10)
# ...and no older than this (older ones stay as they are: an admin looks at them).
SWEEP_HORIZON = timedelta(days=7)
SWEEP_LIMIT = 500


@dataclass
class SweepReport:
    calls: list[int] = field(default_factory=list)
    integrations: list[int] = field(default_factory=list)


def sweep() -> SweepReport:
    """What the periodic task re-queues: lost call syncs, due hangup events, due outboxes."""
    now = timezone.now()
    report = SweepReport()
    never_outboxed = (
        Call.objects.filter(
            state=Call.State.ENDED, crm_sync_state__in=[Call.CrmSync.PENDING, Call.CrmSync.FAILED],
            ended_at__lt=now - SWEEP_GRACE, ended_at__gte=now - SWEEP_HORIZON,
        )
        .filter(~Exists(CrmCallSync.objects.filter(call=OuterRef("pk"), outbox_at__isnull=False)))
        .order_by("ended_at")
        .values_list("id", flat=True)[:SWEEP_LIMIT]
    )
    hangup_due = (
        CrmCallSync.objects.filter(
            integration__enabled=True, in_event_sent_at__isnull=False, hangup_event_sent_at__isnull=True,
            events_skipped="", call__state=Call.State.ENDED, call__ended_at__gte=now - SWEEP_HORIZON,
        )
        .filter(Q(events_next_at__isnull=True) | Q(events_next_at__lte=now))
        .values_list("call_id", flat=True)[:SWEEP_LIMIT]
    )
    # Whatever the call's upload did: a call can be uploaded while its start event still waits on a retry
    # (retailCRM's limit unreadable, the retry task lost with the broker), and the event is still due.
    start_unsent = CrmCallSync.objects.filter(call=OuterRef("pk"), in_event_sent_at__isnull=True, events_skipped="")
    start_due = (
        Call.objects.filter(
            created_at__gte=now - SWEEP_HORIZON, updated_at__lt=now - START_EVENT_SWEEP_GRACE, is_internal=False,
        )
        .exclude(crm_sync_state=Call.CrmSync.SKIPPED)
        .filter(Q(state__in=ACTIVE_STATES) | Q(state=Call.State.ENDED, ended_at__gte=now - START_EVENT_STALE_AFTER))
        .filter(~Exists(CrmCallSync.objects.filter(call=OuterRef("pk")))
                | Exists(start_unsent.filter(Q(events_next_at__isnull=True) | Q(events_next_at__lte=now))))
        .order_by("created_at")
        .values_list("id", flat=True)[:SWEEP_LIMIT]
    )
    report.calls = sorted(set(never_outboxed) | set(hangup_due) | set(start_due))
    for integration in RetailCrmIntegration.objects.filter(enabled=True):
        if _due_outbox(integration.pk).exists():
            report.integrations.append(integration.pk)
    return report
