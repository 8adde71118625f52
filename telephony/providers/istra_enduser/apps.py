from django.apps import AppConfig
from django.utils.translation import gettext_lazy


class IstraEndUserConfig(AppConfig):
    """Centile Istra End User API (myIstra): voicemail, call history, caller-ID, console counters."""

    name = "telephony.providers.istra_enduser"
    verbose_name = "Istra End User API"

    def ready(self):
        from telephony.providers import registry
        from telephony.providers.istra_enduser import plugins

        registry.register(registry.ProviderApp(
            kind="istra_enduser",
            label=gettext_lazy("Istra End User API (myIstra)"),
            provider="telephony.providers.istra_enduser.transport.EndUserProvider",
            capabilities=registry.Capabilities(parallel_requests=True, caller_id=True, audio=True),
            url_prefix="enduser/",  # the console's voicemail endpoints
            beat={
                # Create the calls the call history has and no socket saw.
                "enduser-backfill": {
                    "task": "telephony.providers.istra_enduser.tasks.backfill_enduser_accounts_task",
                    "schedule": 120.0,
                },
            },
            admin_notes="telephony.providers.istra_enduser.admin.notes",
        ))
        # Voicemail audio (retailCRM's recordUrl of a missed call) and caller-ID (a click-to-call's shop
        # number) plug into the core's registries (telephony.plugins).
        plugins.register()
