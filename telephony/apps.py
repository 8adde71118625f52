from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TelephonyConfig(AppConfig):
    name = "telephony"
    verbose_name = _("Telephony")

    def ready(self):
        # Logout, deactivation and a password change close the user's open consoles.
        from telephony.console_sessions import connect_signals

        connect_signals()

        # An agent's status change (accounts announces it) reaches their consoles and the wallboards.
        from accounts.signals import agent_status_changed
        from telephony.console import push_agent_status

        agent_status_changed.connect(push_agent_status, dispatch_uid="telephony.console.push_agent_status")

        # Listeners by state on /metrics.
        from ctihub.lib import metrics
        from telephony.metrics import listeners_by_state

        metrics.add_collector(listeners_by_state)
