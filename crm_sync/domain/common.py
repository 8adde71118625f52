"""What every concern of the CRM side shares: retry and backoff, the client, the integrations serving
an account, and the call's ``crm_sync_state`` they all settle."""

from __future__ import annotations

from crm_sync.models import CrmCallSync, RetailCrmIntegration
from crm_sync.retailcrm.client import RetailCrmClient
from telephony.models import Call

# Backoff when retailCRM is unavailable: 2, 4, 8 ... seconds, at most 10 minutes.
BACKOFF_FIRST = 2
BACKOFF_CAP = 600
ACTIVE_STATES = (Call.State.RINGING, Call.State.DIALING, Call.State.TALKING, Call.State.HELD)


class RetryLater(Exception):
    """retailCRM is unavailable; ``delay`` is the seconds until the next try."""

    def __init__(self, message: str, delay: float):
        super().__init__(message)
        self.delay = delay


def backoff(attempts: int) -> float:
    return float(min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** max(0, attempts - 1)))


def client_for(integration: RetailCrmIntegration) -> RetailCrmClient:
    return RetailCrmClient.for_integration(integration)


def integrations_for(account_id: int):
    return (
        RetailCrmIntegration.objects.filter(enabled=True).filter(accounts__isnull=True)
        | RetailCrmIntegration.objects.filter(enabled=True, accounts__id=account_id)
    ).distinct()


def _refresh_crm_sync_state(call_ids: list[int]) -> None:
    """Call.crm_sync_state: synced once every integration has it (or has nothing to upload)."""
    for call_id in set(call_ids):
        rows = list(CrmCallSync.objects.filter(call_id=call_id).values("uploaded_at", "upload_skipped", "outbox_at",
                                                                        "last_error"))
        if rows and all(r["uploaded_at"] or (r["outbox_at"] and r["upload_skipped"]) for r in rows):
            state = Call.CrmSync.SYNCED
        elif any(r["last_error"] for r in rows):
            state = Call.CrmSync.FAILED
        else:
            state = Call.CrmSync.PENDING
        Call.objects.filter(pk=call_id).exclude(crm_sync_state=state).update(crm_sync_state=state)
