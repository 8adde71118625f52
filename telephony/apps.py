from django.apps import AppConfig


class TelephonyConfig(AppConfig):
    name = "telephony"
    verbose_name = "Telephony"

    def ready(self):
        # The End User API's voicemail audio (retailCRM's recordUrl of a missed call) and caller-ID
        # (a click-to-call's shop number) plug into the core's registries (telephony.plugins).
        from telephony.providers.istra_enduser.plugins import register

        register()

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
