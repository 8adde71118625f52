from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CrmSyncConfig(AppConfig):
    name = "crm_sync"
    verbose_name = _("CRM sync")

    def ready(self):
        from crm_sync import signals  # noqa: F401  (connects the re-registration receivers)
        from crm_sync.plugins import register

        register()  # the call hand-off and the cards' retailCRM fields (telephony.plugins)

        # A recordUrl's last segment is its signature: never in a log line.
        from ctihub.lib import logs

        logs.add_secret_path("/api/retailcrm/records/")

        # The upload outbox's depth on /metrics.
        from crm_sync.metrics import outbox_depth
        from ctihub.lib import metrics

        metrics.add_collector(outbox_depth)
