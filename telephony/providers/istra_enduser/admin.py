"""What the account's admin page says about an End User account (``registry.admin_notes``)."""

from django.utils.translation import gettext_lazy as _

CALL_HISTORY = _("Calls whose end a socket missed")


def notes(account) -> list[tuple[str, str]]:
    return [(CALL_HISTORY,
             _("This account's call history also ends the calls of a myCrm account with the same login on the "
               "same server that its sockets saw begin but not end (after each of its reconnects, and every "
               "2 minutes), and creates the calls no socket saw."))]
