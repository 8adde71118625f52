"""What the CRM sync adds to ``/metrics`` (``ctihub.lib.metrics.add_collector``, from ``CrmSyncConfig.ready``)."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily


def outbox_depth():
    from crm_sync.domain import outbox_size
    from crm_sync.models import RetailCrmIntegration

    outbox = GaugeMetricFamily(
        "ctihub_crm_outbox_depth", "Calls waiting for their upload to retailCRM, by integration.",
        labels=["integration"],
    )
    for integration_id, name in RetailCrmIntegration.objects.values_list("id", "name"):
        outbox.add_metric([name], outbox_size(integration_id))
    yield outbox
