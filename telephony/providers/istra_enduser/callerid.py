"""Presenting a shop's number as the agent's caller-ID for a click-to-call, then putting theirs back.

retailCRM's click-to-call names the shop line the customer should see
(``externalPhone``). Only the End User API can change what the PBX presents, so
``present_external_phone`` (a caller-ID presenter, ``telephony.plugins``, asked by
the CRM side's click-to-call before it places the call) finds the agent's End User
account on the same platform, keeps the agent's current setting, and sets
``ManualSetting`` with the shop's E.164.

When to put the agent's own setting back: the PBX applies the caller-ID when it
dials the customer, which is after the agent's own phone answered the
click-to-call, so restoring at once would undo it. ``restore_caller_id`` runs
``RESTORE_FIRST_CHECK`` seconds later and then every ``RESTORE_RECHECK`` seconds
while the agent still has an outgoing call that is being set up (dialling or
ringing), at most until ``RESTORE_GIVE_UP``. Overlapping click-to-calls keep the
setting the agent had before the first one (the saved setting is never
overwritten while a restore is pending).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta

from django.utils import timezone

from ctihub.lib.phones import e164_or_empty
from telephony.models import Call, PbxAccount, Terminal
from telephony.providers.base import ProviderError
from telephony.providers.istra_enduser.backfill import platform_host
from telephony.providers.istra_enduser.console import owner_agent_ids
from telephony.providers.istra_enduser.transport import CallerId

logger = logging.getLogger(__name__)

SAVED_KEY = "ctihub:enduser:{}:caller-id-before"
RESTORE_FIRST_CHECK = 30
RESTORE_RECHECK = 15
RESTORE_GIVE_UP = timedelta(minutes=10)
SETTING_UP = (Call.State.DIALING, Call.State.RINGING)


def _redis():
    from ctihub.lib.shared_redis import shared_redis

    return shared_redis()


def enduser_account_for(terminal: Terminal) -> PbxAccount | None:
    """The End User account of the terminal's agent on the terminal's platform (or the terminal's own)."""
    account = terminal.account
    if account.kind == PbxAccount.Kind.ISTRA_ENDUSER:
        return account if account.enabled else None
    if terminal.agent_id is None:
        return None
    host = platform_host(account)
    candidates = (
        Terminal.objects.filter(agent_id=terminal.agent_id, active=True, account__enabled=True,
                                account__kind=PbxAccount.Kind.ISTRA_ENDUSER)
        .select_related("account").order_by("account_id")
    )
    for candidate in candidates:
        if platform_host(candidate.account) == host:
            return candidate.account
    return None


def present_external_phone(terminal: Terminal, external_phone: str) -> bool:
    """Set the caller-ID to ``external_phone`` for the next call; True once the PBX accepted it."""
    from telephony.providers.istra_enduser.tasks import enqueue, restore_caller_id_task
    from telephony.providers.registry import cached_provider

    account = enduser_account_for(terminal)
    if account is None:
        return False
    number = e164_or_empty(external_phone, account.default_region or None)
    if not number:
        logger.warning("not presenting %r: not a phone number", external_phone, extra={"account_id": account.pk})
        return False
    key = SAVED_KEY.format(account.pk)
    provider, lock = cached_provider(account)
    saved_now = False
    try:
        with lock:
            current = provider.caller_id()
            if current.manual and current.number == number:
                return True  # already presented (by an earlier click-to-call, or by the agent)
            saved = {"choice": current.choice, "number": current.number, "since": time.time()}
            saved_now = bool(_redis().set(key, json.dumps(saved), nx=True, ex=int(RESTORE_GIVE_UP.total_seconds()) * 2))
            provider.set_caller_id(number)
    except ProviderError as exc:
        logger.warning("could not present %s as the caller-ID: %s", number, exc, extra={"account_id": account.pk})
        if saved_now:
            _redis().delete(key)
        return False
    enqueue(restore_caller_id_task, account.pk, countdown=RESTORE_FIRST_CHECK)
    return True


def restore_caller_id(account_id: int) -> str:
    """'restored', 'nothing to restore', or 'waiting' (a call is still being set up: ask again later)."""
    from telephony.providers.registry import cached_provider

    client = _redis()
    key = SAVED_KEY.format(account_id)
    raw = client.get(key)
    if raw is None:
        return "nothing to restore"
    saved = json.loads(raw)
    since = datetime.fromtimestamp(float(saved.get("since", 0)), tz=UTC)
    waited_too_long = timezone.now() - since > RESTORE_GIVE_UP
    setting_up = Call.objects.filter(
        agent_id__in=owner_agent_ids(account_id), direction=Call.Direction.OUTBOUND, state__in=SETTING_UP,
        created_at__gte=since - timedelta(seconds=5),
    ).exists()
    if setting_up and not waited_too_long:
        return "waiting"
    account = PbxAccount.objects.filter(pk=account_id).first()
    if account is None:
        client.delete(key)
        return "nothing to restore"
    provider, lock = cached_provider(account)
    with lock:
        provider.restore_caller_id(CallerId(str(saved.get("choice") or ""), str(saved.get("number") or "")))
    client.delete(key)
    logger.info("restored the agent's caller-ID setting", extra={"account_id": account_id})
    return "restored"
