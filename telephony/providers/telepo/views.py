"""Where Telepo calls us: the 3rd Party CRM Connector webhook, ``POST /api/telepo/webhook/<secret>``.

The account is the one whose ``webhook_secret`` is in the URL, compared in
constant time against every Telepo account (a secret is encrypted at rest, so it
cannot be looked up). The view only validates and stores the update; cards,
the CRM sync and the snapshot reconcile it may ask for all run after commit.
A body that makes no sense (not JSON, no call_id, seq_num or timestamp) is a 400
with the reason, logged with the account, and touches nothing. A value the spec
does not list (a state, a termination reason...) is no such body: the message
applies with that value kept as given (``frames``), and ``branches`` decides what
it means for a call that rings, or is answered, on several devices.

Rate limit (``ctihub.lib.ratelimit``): one bucket per account, so a Telepo that
floods us cannot starve the others. One account's webhook carries every state
change of every call of a whole organisation, and Telepo is not known to retry
a refused message, so its budget is ``ACCOUNT_RATE_SCALE`` times a retailCRM
caller's. A secret that matches no account counts against the address it came
from at the usual rate, so guessing secrets is limited too (a bucket per
guessed secret would not limit anything). The limit is checked before anything
else is said about the secret or the body.
"""

from __future__ import annotations

import hmac
import logging

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from ctihub.lib import ratelimit
from telephony.domain import AppliedUpdate, apply_call_update
from telephony.models import Call, PbxAccount
from telephony.providers.telepo import branches
from telephony.providers.telepo.frames import parse_webhook_body
from telephony.providers.telepo.reconcile import request_reconcile
from telephony.status import set_account_status
from telephony.updates import FrameRejected

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
RATE_LIMIT_ENDPOINT = "telepo-webhook"
ACCOUNT_RATE_SCALE = 10


@csrf_exempt
@require_POST
def webhook(request: HttpRequest, secret: str) -> JsonResponse:
    account = account_for_secret(secret)
    refused = ratelimit.check(request, RATE_LIMIT_ENDPOINT, caller=_caller(request, account),
                              scale=ACCOUNT_RATE_SCALE if account is not None else 1)
    if refused is not None:
        return refused
    if account is None:
        return JsonResponse({"error": "unknown webhook"}, status=404)
    if not account.enabled:
        return JsonResponse({"error": "this PBX account is disabled"}, status=403)
    if len(request.body) > MAX_BODY_BYTES:
        return _rejected(account, "the body is too large")
    try:
        update = parse_webhook_body(request.body, account.pk)
    except FrameRejected as exc:
        return _rejected(account, str(exc))
    last_seq, answered = _last_seq_and_answered(account.pk, update)
    if last_seq is not None and update.seq <= last_seq and (answered or not branches.is_an_answer(update.payload)):
        # Old news: a duplicate, a late or a replayed message (see _last_seq_and_answered).
        # Telepo is alive all the same.
        _note_event(account)
        return JsonResponse({"ok": True, "applied": False})
    gap = _is_gap(last_seq, update.seq)
    applied = _apply(update)
    _note_event(account)
    # The snapshot brings the new stateToken and exact actions of a live call, and fills a gap.
    if update.terminal_pbx_id and (gap or (applied.changed and applied.call.state != Call.State.ENDED)):
        request_reconcile(account.pk, update.terminal_pbx_id)
    return JsonResponse({"ok": True, "applied": applied.changed})


def _apply(update) -> AppliedUpdate:
    """The webhook's update as the call's branches settle it, after the answer it implies if any (one transaction).

    See ``branches``: one device's end is not the call's while another device has it, a voicemail
    is not the agent answering, and an unknown state keeps the call as it was.
    """
    with transaction.atomic():
        call = branches.lock_call(update.account_id, update.pbx_call_id)
        for settled in branches.settle_webhook(update, call):
            applied = apply_call_update(settled)
        return applied


def account_for_secret(secret: str) -> PbxAccount | None:
    """The Telepo account with this secret; every account is compared so timing says nothing."""
    offered = (secret or "").encode("utf-8")
    found = None
    for account in PbxAccount.objects.filter(kind=PbxAccount.Kind.TELEPO):
        expected = (account.webhook_secret or "").encode("utf-8")
        if expected and hmac.compare_digest(expected, offered) and found is None:
            found = account
    return found


def _caller(request: HttpRequest, account: PbxAccount | None) -> str:
    if account is not None:
        return f"telepo-account:{account.pk}"
    return "addr:" + (request.META.get("REMOTE_ADDR") or "unknown")


def _rejected(account: PbxAccount, reason: str) -> JsonResponse:
    logger.warning("Telepo webhook rejected: %s", reason, extra={"account_id": account.pk, "account": account.name})
    return JsonResponse({"error": reason}, status=400)


def _last_seq_and_answered(account_id: int, update) -> tuple[int | None, bool]:
    """The newest message number applied to this call (None for a call we never had a message of),
    and whether we know the call was answered.

    Telepo's call ids are unique and it numbers a call's messages, so a message
    numbered at or below this was seen, or superseded, whatever its timestamp
    says: a sender that stamps a redelivery with the time it resends must not
    make a day-old TRYING look like a new call reusing the id, nor a replayed
    TERMINATED imply an answer to a call it cannot find. The domain drops such
    a message too; answering here keeps it from reaching the domain at all.
    last_seq only grows, so a message that is old news when read stays so.

    Except an agent's answer for a call we hold as never answered: Telepo delivers out
    of order and the end may come first, so that answer is news whatever its number
    (``branches.late_answer``). Once the call is answered, it is old news too.

    And except another user's message under an ended call's id (a blind transfer's target): the domain
    decides (``domain._is_recycled_id``: a leg setting up is a call of its own, anything else of an ended
    call is old news there too), since nothing says Telepo carries the sequence on to the new user rather
    than start it again.
    """
    row = (Call.objects.filter(account_id=account_id, pbx_call_id=update.pbx_call_id)
           .values_list("last_seq", "answered_at", "state", "terminal__pbx_id").first())
    if row is None:
        return None, False
    last_seq, answered_at, state, user_id = row
    if state == Call.State.ENDED and update.terminal_pbx_id and user_id and update.terminal_pbx_id != user_id:
        return None, False
    return last_seq, answered_at is not None


def _is_gap(last_seq: int | None, seq: int) -> bool:
    """A seq_num jump: messages in between were lost (or are late), so ask the snapshot."""
    return seq > (last_seq or 0) + 1


def _note_event(account: PbxAccount) -> None:
    PbxAccount.objects.filter(pk=account.pk).update(last_event_at=timezone.now())
    if account.status != PbxAccount.Status.CONNECTED:
        set_account_status(account.pk, PbxAccount.Status.CONNECTED)
