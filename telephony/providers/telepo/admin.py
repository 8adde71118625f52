"""What the account's admin page says about a Telepo account (``registry.admin_notes``)."""

from django.conf import settings


def notes(account) -> list[tuple[str, str]]:
    # Telepo lists no users and must be told where to post: say both (the secret stays write-only).
    return [("Telepo setup",
             f"CRM connector webhook URL: {settings.PUBLIC_BASE_URL}/api/telepo/webhook/<webhook secret>. "
             "Add one terminal per Telepo user: PBX id = userId, extension = the deviceId to call from.")]
