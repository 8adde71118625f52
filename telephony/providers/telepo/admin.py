"""What the account's admin page says about a Telepo account (``registry.admin_notes``)."""

from urllib.parse import urlsplit

from django.conf import settings
from django.utils.translation import gettext


def notes(account) -> list[tuple[str, str]]:
    # Telepo lists no users and must be told where to post: say both (the secret stays write-only).
    url = f"{settings.PUBLIC_BASE_URL}/api/telepo/webhook/<webhook secret>"
    notes = [(gettext("Telepo setup"),
              gettext("CRM connector webhook URL: %(url)s. Add one terminal per Telepo user: PBX id = userId, "
                      "extension = the deviceId to call from.") % {"url": url})]
    if urlsplit(settings.PUBLIC_BASE_URL).scheme != "https":
        # The spec: the CRM connector webhook URL "must be using the HTTPS scheme". Telepo then posts nothing,
        # and only the periodic snapshot keeps the calls roughly right: no pop-up rings in time.
        notes.append((gettext("Telepo will not post to this URL"),
                      gettext("Telepo only posts to an HTTPS webhook URL. Set PUBLIC_BASE_URL to this hub's https "
                              "address (behind a TLS proxy); until then calls are only seen by the snapshot check "
                              "every minute, and no card pops up when a phone rings.")))
    return notes
