"""Celery tasks of the myRCC provider: pull again the call lines a reconnect could not pull.

After a reconnect, a call ctihub holds live that the PBX no longer lists is settled by
pulling its line (``transport.MyRccProvider._catch_up``; a line the PBX does not find,
400 ERR_0 or 404, ended while we were away). A line the PBX could not give then (a 5xx,
no answer) must not keep the listener from connecting: its call is
left as it is and the line is pulled again here, later, on a session of its own, a few
times (``PULL_RETRY_DELAYS``). Past those the next reconnect asks again.

Found by Celery's autodiscovery (this app is installed).
"""

from __future__ import annotations

import logging

from celery import shared_task

from ctihub.lib.queueing import enqueue
from telephony.models import PbxAccount
from telephony.providers.base import ProviderError

logger = logging.getLogger(__name__)

# Seconds before each new try: about 40 minutes in all, then the lines wait for the next reconnect.
PULL_RETRY_DELAYS = (15, 60, 300, 900, 1800)


def schedule_pull(account_id: int, line_ids: list[str], attempt: int = 0) -> bool:
    """Queue try number ``attempt`` of pulling ``line_ids``; False once the tries are spent (or not queued)."""
    if attempt >= len(PULL_RETRY_DELAYS):
        logger.warning("myRCC call lines %s still cannot be pulled; the next reconnect will ask again",
                       ", ".join(line_ids), extra={"account_id": account_id})
        return False
    return enqueue(pull_lines_task, account_id, list(line_ids), attempt, countdown=PULL_RETRY_DELAYS[attempt])


@shared_task(ignore_result=True)
def pull_lines_task(account_id: int, line_ids: list[str], attempt: int = 0) -> dict:
    from telephony.providers.istra_myrcc.transport import pull_lines_into_calls

    account = PbxAccount.objects.filter(pk=account_id, kind=PbxAccount.Kind.ISTRA_MYRCC, enabled=True).first()
    if account is None:
        return {}
    try:
        changed, unpulled = pull_lines_into_calls(account, line_ids)
    except ProviderError as exc:
        if exc.permanent:  # a refused login: trying again would only count more failures against the account
            logger.warning("myRCC call lines not pulled: %s", exc, extra={"account_id": account_id})
            return {"error": str(exc)}
        changed, unpulled = 0, list(line_ids)
    if unpulled:
        schedule_pull(account_id, unpulled, attempt + 1)
    return {"changed": changed, "unpulled": unpulled}
