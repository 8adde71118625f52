from django.apps import AppConfig
from django.utils.translation import gettext_lazy


class IstraMyRccConfig(AppConfig):
    """Centile Istra myRCC: an enterprise's call lines, over one RCC administrator's session."""

    name = "telephony.providers.istra_myrcc"
    verbose_name = "Istra myRCC"

    def ready(self):
        from telephony.providers import registry

        registry.register(registry.ProviderApp(
            kind="istra_myrcc",
            label=gettext_lazy("Istra myRCC (enterprise call control)"),
            provider="telephony.providers.istra_myrcc.transport.MyRccProvider",
            capabilities=registry.Capabilities(parallel_requests=True),  # one shared IstraSession
            admin_notes="telephony.providers.istra_myrcc.admin.notes",
        ))
