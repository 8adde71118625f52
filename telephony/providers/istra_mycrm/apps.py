from django.apps import AppConfig
from django.utils.translation import gettext_lazy


class IstraMyCrmConfig(AppConfig):
    """Centile Istra myCrm: one socket per terminal, per end user's session."""

    name = "telephony.providers.istra_mycrm"
    verbose_name = "Istra myCrm"

    def ready(self):
        from telephony.providers import registry

        registry.register(registry.ProviderApp(
            kind="istra_mycrm",
            label=gettext_lazy("Istra myCrm (end user, per terminal)"),
            provider="telephony.providers.istra_mycrm.transport.MyCrmProvider",
            capabilities=registry.Capabilities(parallel_requests=True),  # one shared IstraSession
            admin_notes="telephony.providers.istra_mycrm.admin.notes",
        ))
