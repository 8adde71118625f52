"""What the account's admin page says about a Telepo account (``registry.admin_notes``)."""

from django.conf import settings
from django.utils.translation import gettext


def notes(account) -> list[tuple[str, str]]:
    # Telepo lists no users and must be told where to post: say both (the secret stays write-only).
    return [(gettext("Telepo setup"),
             gettext("CRM connector webhook URL: %(url)s. Add one terminal per Telepo user: PBX id = userId, "
                     "extension = the deviceId to call from.")
             % {"url": f"{settings.PUBLIC_BASE_URL}/api/telepo/webhook/<webhook secret>"})]
