from django.apps import AppConfig


class TelephonyConfig(AppConfig):
    name = "telephony"
    verbose_name = "Telephony"

    def ready(self):
        # Voicemail audio is the recording retailCRM plays for a missed call (its recordUrl).
        from telephony.providers.istra_enduser.recordings import register

        register()

        # Logout, deactivation and a password change close the user's open consoles.
        from telephony.console_sessions import connect_signals

        connect_signals()

        # Listeners by state on /metrics.
        from ctihub.lib import metrics
        from telephony.metrics import listeners_by_state

        metrics.add_collector(listeners_by_state)
