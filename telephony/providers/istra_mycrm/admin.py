"""What the account's admin page says about a myCrm account (``registry.admin_notes``)."""

from django.utils.translation import gettext


def notes(account) -> list[tuple[str, str]]:
    # myCrm has no list of live calls to catch up from after a reconnect: say what ends a call it missed.
    from telephony.providers.istra_enduser.admin import CALL_HISTORY
    from telephony.providers.istra_enduser.backfill import enduser_account_for

    if account.pk is None:
        return []
    enduser = enduser_account_for(account)
    if enduser is not None:
        return [(CALL_HISTORY, gettext("Reconciled after each reconnect from the call history of the End User "
                                       "account '%(account)s' (same login, same server).") % {"account": enduser.name})]
    return [(CALL_HISTORY, gettext(
             "No enabled End User account with this login on this server: a call whose end was lost while a "
             "socket was down is ended (end cause 'swept') once it has had no news for "
             "CALL_STALE_<STATE>_SECONDS. Add an End User account with the same login to end it from the "
             "call history right after the reconnect."))]
