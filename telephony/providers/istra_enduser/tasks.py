"""Celery tasks of the End User provider: small, id in.

Found by Celery's autodiscovery (this app is installed); its beat entry (``apps.py``) runs
``backfill_enduser_accounts_task``.
``reconcile_after_reconnect_task`` is queued by the myCrm provider each time one of
its sockets (re)connects (``istra_mycrm.transport.MyCrmProvider.open_stream``).
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready

from ctihub.lib.queueing import enqueue
from telephony.models import PbxAccount
from telephony.providers.base import ProviderError

logger = logging.getLogger(__name__)

RESTORE_RETRIES = 60


@shared_task(ignore_result=True)
def backfill_enduser_accounts_task() -> int:
    """Beat: one backfill per enabled End User account."""
    account_ids = list(
        PbxAccount.objects.filter(kind=PbxAccount.Kind.ISTRA_ENDUSER, enabled=True).values_list("pk", flat=True)
    )
    for account_id in account_ids:
        enqueue(backfill_account_task, account_id)
    return len(account_ids)


@shared_task(ignore_result=True)
def backfill_account_task(account_id: int) -> dict:
    account = PbxAccount.objects.filter(pk=account_id, kind=PbxAccount.Kind.ISTRA_ENDUSER, enabled=True).first()
    if account is None:
        return {}
    return _backfill(account)


@shared_task(ignore_result=True)
def reconcile_after_reconnect_task(account_id: int) -> dict:
    """After a myCrm socket (re)connected: end its calls the PBX ended meanwhile, from its user's call history.

    myCrm lists no live calls to catch up from; the End User account with the same
    login on the same server (if the admin configured one) has the history. Without
    one, the stale-call sweep (``telephony.sweep``) ends such calls later.
    """
    from telephony.providers.istra_enduser.backfill import enduser_account_for

    account = PbxAccount.objects.filter(pk=account_id, kind=PbxAccount.Kind.ISTRA_MYCRM).first()
    enduser = enduser_account_for(account) if account is not None else None
    if enduser is None:
        return {}
    return {"enduser_account_id": enduser.pk, **_backfill(enduser)}


def _backfill(account: PbxAccount) -> dict:
    from telephony.providers.istra_enduser.backfill import backfill_account

    account_id = account.pk
    try:
        report = backfill_account(account)
    except ProviderError as exc:
        # The next scheduled run tries again; the admin sees why on the account.
        from telephony.status import set_account_status

        logger.warning("call-history backfill failed: %s", exc, extra={"account_id": account_id})
        set_account_status(account_id, account.status, f"call-history backfill: {exc}")  # the error, not the status
        return {"error": str(exc)}
    return report.as_dict()


@shared_task(bind=True, ignore_result=True)
def restore_caller_id_task(self, account_id: int) -> str:
    from telephony.providers.istra_enduser.callerid import RESTORE_RECHECK, restore_caller_id

    try:
        outcome = restore_caller_id(account_id)
    except ProviderError as exc:
        logger.warning("could not restore the caller-ID yet: %s", exc, extra={"account_id": account_id})
        outcome = "waiting"
    if outcome == "waiting" and self.request.retries < RESTORE_RETRIES:
        raise self.retry(countdown=RESTORE_RECHECK, max_retries=RESTORE_RETRIES)
    return outcome


@worker_ready.connect(weak=False)
def _backfill_on_start(**_kwargs) -> None:
    # Calls made while no hub was running reached no socket; the PBX's call history has them.
    enqueue(backfill_enduser_accounts_task)
