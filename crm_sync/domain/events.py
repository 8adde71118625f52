"""A call's events (``in``/``out`` when it starts, ``hangup`` when it ends), each exactly once, under a
claim on its ``CrmCallSync`` row; then the finished call into the outbox."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import InterfaceError, OperationalError, connection
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from crm_sync import claims
from crm_sync.domain.common import RetryLater, _refresh_crm_sync_state, backoff, client_for, integrations_for
from crm_sync.domain.outbox import enter_outbox
from crm_sync.domain.shops import shop_of
from crm_sync.models import CrmCallSync, RetailCrmIntegration
from crm_sync.retailcrm import payloads
from crm_sync.retailcrm.client import RetailCrmAuthError, RetailCrmError
from telephony.models import Call

logger = logging.getLogger(__name__)

# An in/out event pops a card in retailCRM. For a call that ended longer ago than
# this it would pop a card for a call that is long gone: skipped, the upload carries the call.
START_EVENT_STALE_AFTER = timedelta(seconds=60)
# A call's events are worth sending only while the call is fresh (START_EVENT_STALE_AFTER): their retries
# stay this close together, or a few failures in a row would push the pop-up past its use even when
# retailCRM was back within seconds.
EVENT_BACKOFF_CAP = 10


class EventsBusy(Exception):
    """Another worker holds the call's events claim right now: try again in a moment."""


@dataclass
class SyncReport:
    sent: list[str] = field(default_factory=list)
    outboxed: list[int] = field(default_factory=list)  # integration ids with a call newly in their outbox


def sync_call(call_id: int) -> SyncReport:
    """Send the call's due events to every integration, then put a finished call in the outbox.

    Raises ``EventsBusy`` when another worker holds a claim (the task retries
    shortly) and ``RetryLater`` when retailCRM is unavailable.
    """
    report = SyncReport()
    call = Call.objects.filter(pk=call_id).first()
    if call is None:
        return report
    integrations = list(integrations_for(call.account_id))
    if not integrations:
        Call.objects.filter(pk=call_id, crm_sync_state=Call.CrmSync.PENDING).update(
            crm_sync_state=Call.CrmSync.SKIPPED
        )
        return report
    busy, retry = None, None
    was_pending = call.crm_sync_state == Call.CrmSync.PENDING
    outboxed_any = False
    for integration in integrations:
        row, _ = CrmCallSync.objects.get_or_create(integration=integration, call=call)
        read_after_claim = None
        try:
            report.sent += send_due_events(row, integration)
            read_after_claim = row.call  # read under the claim (send_due_events): no need to read it again
        except EventsBusy as exc:
            busy = exc
        except RetryLater as exc:
            retry = exc
        if read_after_claim is not None:
            call = read_after_claim
        else:
            call.refresh_from_db()
        if call.state == Call.State.ENDED and enter_outbox(row, call):
            report.outboxed.append(integration.pk)
            outboxed_any = True
        elif call.state == Call.State.ENDED:
            outboxed_any = True  # already there: its upload may have settled the state
    # A pending call stays pending after events sent without error and no outbox change (synced needs
    # uploads, failed an error): the state's two statements are only needed otherwise.
    if not (was_pending and busy is None and retry is None and not outboxed_any):
        _refresh_crm_sync_state([call_id])
    if retry is not None:
        raise retry
    if busy is not None:
        raise busy
    return report


def _claim(row_id: int, claim_field: str, token: str, extra: Q | None = None) -> bool:
    until = f"{claim_field}_claimed_until"
    free = Q(**{f"{until}__isnull": True}) | Q(**{f"{until}__lt": Now()})
    query = CrmCallSync.objects.filter(pk=row_id).filter(free)
    if extra is not None:
        query = query.filter(extra)
    return bool(query.update(**{until: Now() + claims.CLAIM_LEASE, f"{claim_field}_claim": token}))


def _release(row_id: int, claim_field: str, token: str, **fields) -> None:
    def release():
        CrmCallSync.objects.filter(pk=row_id, **{f"{claim_field}_claim": token}).update(
            **{f"{claim_field}_claimed_until": None, f"{claim_field}_claim": ""}, **fields
        )

    try:
        release()
    except (OperationalError, InterfaceError):
        # The database dropped this connection between the claim and here (a restart, a failover): the
        # claim would hold the call's events for CLAIM_LEASE, and a start event is stale after a minute,
        # so it was never sent. Once more on a new connection (none inside a transaction: it is gone).
        if connection.in_atomic_block:
            raise
        connection.close()
        release()


def send_due_events(row: CrmCallSync, integration: RetailCrmIntegration) -> list[str]:
    """Send what is due for this call, in order (start event before hangup), under the row's claim."""
    token = uuid.uuid4().hex
    if not _claim(row.pk, "events", token):
        raise EventsBusy(f"events of call {row.call_id} are being sent by another worker")
    sent: list[str] = []
    renew = CrmCallSync.objects.filter(pk=row.pk, events_claim=token)
    try:
        with claims.keeper.keep(f"the events claim of call {row.call_id}",
                                lambda: renew.update(events_claimed_until=Now() + claims.CLAIM_LEASE)):
            _send_claimed_events(row, integration, token, sent)
    finally:
        _release(row.pk, "events", token)
    return sent


def _send_claimed_events(row: CrmCallSync, integration: RetailCrmIntegration, token: str, sent: list[str]) -> None:
    # The row and its call as they are now that the claim is ours, in one query.
    fresh = CrmCallSync.objects.select_related("call__agent").get(pk=row.pk)
    for f in CrmCallSync._meta.concrete_fields:
        setattr(row, f.attname, getattr(fresh, f.attname))
    call = row.call = fresh.call
    if row.events_in_flight:
        _settle_unknown_outcome(row, token)
    while True:
        step = _due_event(row, call)
        if step is None:
            break
        if isinstance(step, str):
            CrmCallSync.objects.filter(pk=row.pk, events_claim=token).update(events_skipped=step[:300])
            row.events_skipped = step
            break
        kind, sent_field, builder = step
        known = (row.site_code, row.external_phone)
        site, external_phone = shop_of(row, call, integration, save=False)
        # The shop, resolved once, is written with the in-flight mark (one statement).
        shop = {"site_code": site, "external_phone": external_phone} if (site, external_phone) != known else {}
        _send_event(row, integration, token, kind, sent_field, builder(call, site, external_phone), **shop)
        sent.append(kind)


def _due_event(row: CrmCallSync, call: Call):
    """What to send next: (kind, field, payload builder), a reason to send nothing ever, or None."""
    if row.events_skipped:
        return None
    if row.in_event_sent_at is None:
        if call.is_internal:
            return "an internal call: retailCRM only hears about customers' calls"
        codes, user_ids = payloads.recipients(call)
        if not codes and not user_ids:
            if call.state == Call.State.ENDED:
                return "no agent with a retailCRM code or user id took this call"
            return None  # the agent may still be identified by a later frame
        if not payloads.remote_phone(call):
            if call.state == Call.State.ENDED:
                return "the other party's number is unknown"
            # A later message may bring it (Telepo's next webhook, the snapshot's telUri; a myRCC line's
            # next snapshot): the pop-up waits for it, as for the agent above.
            return None
        if call.state == Call.State.ENDED and call.ended_at < timezone.now() - START_EVENT_STALE_AFTER:
            return "the call had ended before its start event could be sent"
        kind = payloads.IN if call.direction == Call.Direction.INBOUND else payloads.OUT
        return kind, "in_event_sent_at", payloads.start_event
    if call.state == Call.State.ENDED and row.hangup_event_sent_at is None:
        return payloads.HANGUP, "hangup_event_sent_at", payloads.hangup_event
    return None


def _settle_unknown_outcome(row: CrmCallSync, token: str) -> None:
    """A previous send got no answer (or its worker died): count it as delivered, do not resend."""
    sent_field = "in_event_sent_at" if row.events_in_flight in (payloads.IN, payloads.OUT) else "hangup_event_sent_at"
    note = f"the {row.events_in_flight} event got no answer from retailCRM; taken as delivered, not re-sent"
    logger.warning("call %s: %s", row.call_id, note)
    CrmCallSync.objects.filter(pk=row.pk, events_claim=token).update(
        **{sent_field: timezone.now()}, events_in_flight="", last_error=note, last_error_at=timezone.now()
    )
    row.refresh_from_db()


def _send_event(row: CrmCallSync, integration, token: str, kind: str, sent_field: str, event: dict,
                **also) -> None:
    mine = CrmCallSync.objects.filter(pk=row.pk, events_claim=token)
    mine.update(events_in_flight=kind, **also)
    try:
        client_for(integration).call_event(event)
    except RetailCrmError as exc:
        if getattr(exc, "maybe_delivered", False):
            # Leave events_in_flight set: the next holder takes it as delivered.
            mine.update(last_error=str(exc)[:2000], last_error_at=timezone.now())
            raise RetryLater(str(exc), backoff(1)) from exc
        row.events_attempts += 1
        fields = {"events_in_flight": "", "events_attempts": row.events_attempts, "last_error": str(exc)[:2000],
                  "last_error_at": timezone.now()}
        if exc.retryable or isinstance(exc, RetailCrmAuthError):
            # Down, slowing us down, or a key an admin has to fix: try again later (the sweep too).
            delay = min(EVENT_BACKOFF_CAP, backoff(row.events_attempts))
            mine.update(**fields, events_next_at=timezone.now() + timedelta(seconds=delay))
            raise RetryLater(str(exc), delay) from exc
        # retailCRM refused this event itself: the same event would be refused again.
        mine.update(**fields, events_skipped=f"retailCRM refused the {kind} event: {exc}"[:300])
        row.events_skipped = "refused"
        logger.warning("call %s: %s", row.call_id, exc)
        return
    now = timezone.now()
    mine.update(**{sent_field: now}, events_in_flight="", events_next_at=None, last_error="")
    setattr(row, sent_field, now)
