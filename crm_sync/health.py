"""The retailCRM integrations' health on the admin's index (``telephony.plugins.register_health_section``,
from ``crm_sync.plugins.register``): registered or not, the last registration error, the upload outbox's
depth and the last upload, in one query whatever the number of integrations (two subqueries, each on an
index: the outbox's partial index and ``crm_call_sync_uploaded``).
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext, ngettext

from crm_sync.models import CrmCallSync, RetailCrmIntegration
from telephony import health
from telephony.health import HealthFix, HealthRow, HealthSection

# Calls waiting and nothing uploaded for this long: the uploads are stuck (retailCRM refuses them, or no
# worker takes the uploads' queue), though registration is fine.
UPLOADS_STALLED_AFTER = timedelta(minutes=15)


def integrations_section(limit: int | None = None) -> HealthSection:
    waiting = (CrmCallSync.objects.filter(integration=OuterRef("pk"), outbox_at__isnull=False,
                                          uploaded_at__isnull=True, upload_skipped="")
               .order_by().values("integration").annotate(n=Count("pk")).values("n"))
    last_upload = (CrmCallSync.objects.filter(integration=OuterRef("pk"), uploaded_at__isnull=False)
                   .order_by("-uploaded_at").values("uploaded_at")[:1])
    integrations = (RetailCrmIntegration.objects
                    .only("name", "enabled", "registered_at", "last_error")  # not the API key, not the clientId
                    .annotate(outbox=Coalesce(Subquery(waiting, output_field=IntegerField()), 0),
                              last_upload=Subquery(last_upload))
                    .order_by("name"))
    now = timezone.now()
    rows = [_row(integration, now) for integration in integrations]
    counts = {status: sum(1 for row in rows if row.status == status) for status in health.STATUSES}
    rows.sort(key=lambda row: health.STATUSES.index(row.status))  # stable: by name within a status
    return HealthSection("retailcrm_integrations", gettext("retailCRM integrations"), RetailCrmIntegration,
                         rows[:limit or health.ROW_LIMIT], counts, detail_title=gettext("Upload outbox"),
                         last_event_title=gettext("Last upload"))


def _row(integration: RetailCrmIntegration, now) -> HealthRow:
    fix = None
    if not integration.enabled:
        status, label = health.OFF, gettext("Disabled")
    elif integration.last_error:
        status, label = health.DOWN, gettext("Registration failed")
        fix = HealthFix(gettext("Re-register in retailCRM"), RetailCrmIntegration, "register_module", integration.pk)
    elif integration.registered_at is None:
        status, label = health.DEGRADED, gettext("Not registered")
        fix = HealthFix(gettext("Register in retailCRM"), RetailCrmIntegration, "register_module", integration.pk)
    elif integration.outbox and (integration.last_upload is None
                                 or now - integration.last_upload > UPLOADS_STALLED_AFTER):
        status, label = health.DEGRADED, gettext("Registered; uploads stalled")
    else:
        status, label = health.OK, gettext("Registered")
    waiting = (ngettext("%(count)s call waiting", "%(count)s calls waiting", integration.outbox)
               % {"count": integration.outbox} if integration.outbox else gettext("empty"))
    return HealthRow(name=integration.name, status=status, state_label=label, url=health.change_url(integration),
                     last_event_at=integration.last_upload, last_error=health.error_text(integration.last_error),
                     detail=waiting, fix=fix)
