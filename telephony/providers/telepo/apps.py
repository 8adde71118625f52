from django.apps import AppConfig

URL_PREFIX = "api/telepo/"


class TelepoConfig(AppConfig):
    """MiCloud Telepo: REST call control; call events come to our CRM connector webhook."""

    name = "telephony.providers.telepo"
    verbose_name = "MiCloud Telepo"

    def ready(self):
        from telephony.providers import registry

        registry.register(registry.ProviderApp(
            kind="telepo",
            label="MiCloud Telepo",
            provider="telephony.providers.telepo.transport.TelepoProvider",
            url_prefix=URL_PREFIX,  # the CRM connector webhook
            # The spec's singlesteptransfer: "blind" and its "type" enum (BASIC the default); and
            # "Remove a participant from an ad-hoc conference".
            # Its requests run side by side: the provider holds only a thread-safe HTTP client and the ticket,
            # and a stale stateToken is the PBX's to refuse. One at a time per account, one slow answer (up to the
            # 10 s read timeout) held every other agent's click behind it.
            capabilities=registry.Capabilities(
                parallel_requests=True,
                transfer_types=("BASIC", "VOICEMAIL", "CAMP_ON", "DIVERSION_BYPASS"), blind_transfer=True,
                remove_party=True,
            ),
            beat={
                # Bring every user's calls to the PBX's call-state snapshot: a missed webhook never leaves a call stuck.
                "telepo-reconcile": {
                    "task": "telephony.providers.telepo.tasks.reconcile_telepo_accounts_task",
                    "schedule": 60.0,
                },
            },
            admin_notes="telephony.providers.telepo.admin.notes",
        ))
        # The webhook's last segment is its secret: never in a log line.
        from ctihub.lib import logs

        logs.add_secret_path(f"/{URL_PREFIX}webhook/")
