"""Celery tasks of the Telepo provider: snapshot reconciles, small and id in.

Found by Celery's autodiscovery (this app is installed); its beat entry (``apps.py``) runs
``reconcile_telepo_accounts_task``.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready

from ctihub.lib.queueing import enqueue
from telephony.models import PbxAccount
from telephony.providers.base import ProviderError

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def reconcile_telepo_accounts_task() -> int:
    """Beat (and worker start): one reconcile per enabled Telepo account."""
    accounts = PbxAccount.objects.filter(kind=PbxAccount.Kind.TELEPO, enabled=True)
    account_ids = list(accounts.values_list("pk", flat=True))
    for account_id in account_ids:
        enqueue(reconcile_account_task, account_id)
    return len(account_ids)


@shared_task(ignore_result=True)
def reconcile_account_task(account_id: int) -> dict:
    from telephony.providers.telepo.reconcile import reconcile_account

    account = PbxAccount.objects.filter(pk=account_id, kind=PbxAccount.Kind.TELEPO, enabled=True).first()
    if account is None:
        return {}
    return reconcile_account(account).counts()


@shared_task(ignore_result=True)
def reconcile_user_task(account_id: int, user_id: str) -> None:
    from telephony.providers.telepo.reconcile import reconcile_user

    account = PbxAccount.objects.filter(pk=account_id, kind=PbxAccount.Kind.TELEPO, enabled=True).first()
    if account is None:
        return
    try:
        reconcile_user(account, user_id)
    except ProviderError as exc:
        # The periodic reconcile tries again and reports it on the account.
        logger.warning("Telepo snapshot of %s failed: %s", user_id, exc, extra={"account_id": account_id})


@worker_ready.connect(weak=False)
def _reconcile_on_start(**_kwargs) -> None:
    # Webhooks sent while no hub was running are lost; the snapshot says where calls are now.
    enqueue(reconcile_telepo_accounts_task)
