"""Domain functions of the CRM side: what reaches retailCRM about calls, agents and the module.

Entry points:

* ``calls_changed`` — after every committed change of calls (``telephony.plugins``'
  ``calls_committed``, connected by ``crm_sync.plugins``); it only queues Celery tasks
  (``crm_sync.tasks``); ``call_changed`` does it for one call by id;
* ``sync_call`` — the call's events (``in``/``out`` when it starts, ``hangup``
  when it ends), each exactly once, then the finished call into the outbox;
* ``upload_outbox`` — finished calls to retailCRM's history, 50 at a time;
* ``route_call`` — responsible-manager routing of a shared line's call;
* ``register_integration`` — the module's registration (codes, shops, URLs);
* ``make_call`` / ``change_user_status`` — what the endpoints retailCRM calls do;
* ``sweep`` — the periodic catch-up for anything a lost task or an outage left.

Exactly once: every send is done by the holder of a claim on the call's
``CrmCallSync`` row, taken with a conditional UPDATE; "sent" is written only
after retailCRM accepted. See ``CrmCallSync`` for the rules.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q, Value
from django.db.models.functions import Least, Now
from django.utils import timezone

from ctihub.lib.brief_cache import BriefCache
from ctihub.lib.phones import UnusablePhoneNumber, e164_or_empty, region_of, to_e164
from ctihub.lib.queueing import enqueue
from accounts.models import Agent
from crm_sync import recordings
from crm_sync.claims import CLAIM_LEASE, keeper
from crm_sync.models import CrmCallSync, ExternalPhone, RetailCrmIntegration, client_id_digests
from crm_sync.retailcrm import payloads
from crm_sync.retailcrm.client import MAX_CALLS_PER_UPLOAD, RetailCrmAuthError, RetailCrmClient, RetailCrmError
from telephony.models import Call, PbxAccount, Terminal
from telephony.queueing import enqueue_soon

logger = logging.getLogger(__name__)

# An in/out event pops a card in retailCRM. For a call that ended longer ago than
# this it would pop a card for a call that is long gone: skipped, the upload carries the call.
START_EVENT_STALE_AFTER = timedelta(seconds=60)
# Sweep: calls whose tasks were lost are picked up once they are this old...
SWEEP_GRACE = timedelta(seconds=60)
# ...but a call whose start event is still worth sending (it is live, or ended less than
# START_EVENT_STALE_AFTER ago) once it has not changed for this long: its task died with the
# broker (a Redis restart) and waiting SWEEP_GRACE would make the event stale, and its hangup with it.
START_EVENT_SWEEP_GRACE = timedelta(seconds=10)
# ...and no older than this (older ones stay as they are: an admin looks at them).
SWEEP_HORIZON = timedelta(days=7)
SWEEP_LIMIT = 500
# Backoff when retailCRM is unavailable: 2, 4, 8 ... seconds, at most 10 minutes.
BACKOFF_FIRST = 2
BACKOFF_CAP = 600
# A call's events are worth sending only while the call is fresh (START_EVENT_STALE_AFTER): their retries
# stay this close together, or a few failures in a row would push the pop-up past its use even when
# retailCRM was back within seconds.
EVENT_BACKOFF_CAP = 10
# A missed call whose caller may be leaving a voicemail is looked at again this often until the message is
# there or RETAILCRM_VOICEMAIL_WAIT_SECONDS passed (the sweep finds it due; each look asks the PBX).
RECORD_RECHECK = timedelta(seconds=10)
# The card of a manager's leg of a redirected call shows the lookup made for the shared line.
ROUTED_CARD_WINDOW = timedelta(minutes=2)
ACTIVE_STATES = (Call.State.RINGING, Call.State.DIALING, Call.State.TALKING, Call.State.HELD)


class EventsBusy(Exception):
    """Another worker holds the call's events claim right now: try again in a moment."""


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


def _enqueue(task, *args, countdown: float | None = None) -> bool:  # patched by tests at this name
    """Queue a task; at once off this thread (``enqueue_soon``): the event path hands calls over here."""
    if countdown is None:
        return enqueue_soon(task, *args)
    return enqueue(task, *args, countdown=countdown)


# --- call_changed: the entry point -------------------------------------------------------


# Which integrations serve an account: the event path asks for every burst of frames.
SERVING = BriefCache("retailcrm-integrations-serving-account", watch=(RetailCrmIntegration,))


def serving_integrations(account_id: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ids of the enabled integrations serving the account, those of them that route to managers)."""
    def load():
        rows = list(integrations_for(account_id).values_list("id", "manager_routing"))
        return tuple(pk for pk, _ in rows), tuple(pk for pk, routes in rows if routes)

    return SERVING.get(account_id, load)


def call_changed(call_id: int, version: int) -> None:
    """Called after a call's transaction commits. Calls no CRM listens to are marked skipped."""
    call = Call.objects.filter(pk=call_id).first()
    if call is not None:
        calls_changed([call])


def calls_changed(calls: list[Call]) -> None:
    """After a burst of call changes commits: each call once, as the domain left it.

    Queues what retailCRM must hear (start and end events, responsible-manager routing);
    calls no CRM listens to are marked skipped, all in one statement.
    """
    from crm_sync import tasks

    skipped = []
    for call in calls:
        integration_ids, routing_ids = serving_integrations(call.account_id)
        if not integration_ids:
            if call.crm_sync_state != Call.CrmSync.SKIPPED:
                skipped.append(call.pk)
            continue
        if (routing_ids and call.state == Call.State.RINGING and call.direction == Call.Direction.INBOUND
                and call.terminal_id):
            routed = RetailCrmIntegration.objects.filter(
                pk__in=routing_ids, shared_lines=call.terminal_id
            ).values_list("id", flat=True)
            for integration_id in routed:
                _enqueue(tasks.route_call_task, integration_id, call.pk)
        if call.state in (Call.State.TALKING, Call.State.HELD) and _start_events_settled(call.pk, integration_ids):
            continue  # answered, held, resumed: nothing retailCRM hears about
        _enqueue(tasks.sync_call_task, call.pk)
    if skipped:  # (those the domain read as skipped already need no statement)
        Call.objects.filter(pk__in=skipped, crm_sync_state=Call.CrmSync.PENDING).update(
            crm_sync_state=Call.CrmSync.SKIPPED
        )


def _start_events_settled(call_id: int, integration_ids: list[int]) -> bool:
    """Every integration has sent the call's start event, or skipped its events.

    In SQL: asked on every answered frame, and Django compiled this count for 0.5 ms of CPU, five
    times what running it costs."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*) FROM {connection.ops.quote_name(CrmCallSync._meta.db_table)} WHERE call_id = %s"
            f" AND integration_id IN ({', '.join(['%s'] * len(integration_ids))})"
            " AND (in_event_sent_at IS NOT NULL OR events_skipped <> '')",
            [call_id, *integration_ids])
        return cursor.fetchone()[0] == len(integration_ids)


# --- events -------------------------------------------------------------------------------


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
    return bool(query.update(**{until: Now() + CLAIM_LEASE, f"{claim_field}_claim": token}))


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
        with keeper.keep(f"the events claim of call {row.call_id}",
                         lambda: renew.update(events_claimed_until=Now() + CLAIM_LEASE)):
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
            return "the other party's number is unknown"
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


def shop_of(row: CrmCallSync, call: Call, integration: RetailCrmIntegration, save: bool = True) -> tuple[str, str]:
    """(site code, external phone) of the call, resolved once and kept on the row.

    The external phone is the shop's number the call is about: the one the PBX gave (myCrm's
    ``acdId``, the number a Telepo caller dialled), else for an outgoing call the one retailCRM
    asked a click-to-call for, else for an incoming call the one PSTN number of the terminal it
    rang (``dialled_number``). The site is the integration's shop with that number.
    """
    if row.site_code or row.external_phone:
        return row.site_code, row.external_phone
    external_phone, site = call.external_phone, call.site_code
    if not external_phone and call.direction == Call.Direction.OUTBOUND and call.terminal_id:
        external_phone = recall_click_to_call(call.terminal_id, call.remote_number_e164) or ""
    if not external_phone and call.direction == Call.Direction.INBOUND and call.terminal_id:
        external_phone = dialled_number(call.terminal_id)
    if external_phone and not site:
        site = (
            ExternalPhone.objects.filter(integration=integration, phone=external_phone)
            .values_list("site_code", flat=True)
            .first()
            or ""
        )
    if (site or external_phone) and save:
        CrmCallSync.objects.filter(pk=row.pk).update(site_code=site, external_phone=external_phone)
    if site or external_phone:
        row.site_code, row.external_phone = site, external_phone
    return site, external_phone


def dialled_number(terminal_id: int) -> str:
    """The number a caller dialled to reach this terminal, when its PSTN numbers say it: '' otherwise.

    myRCC's call lines do not say which number was dialled, but its extension directory lists
    each extension's ``pstnNumbers`` (``Terminal.pstn_numbers``). An extension with exactly one
    was reached on that one. With several, any of them may have been dialled, and naming the
    wrong shop is worse than naming none: none is given.
    """
    found = Terminal.objects.filter(pk=terminal_id).values_list("pstn_numbers", "account__default_region").first()
    if found is None:
        return ""
    numbers, region = found
    numbers = [str(n).strip() for n in (numbers if isinstance(numbers, list) else []) if str(n).strip()]
    if len(numbers) != 1:
        return ""
    return e164_or_empty(numbers[0], region or None)[:32]


# --- the outbox -----------------------------------------------------------------------------


def upload_skip_reason(call: Call, row: CrmCallSync) -> str:
    """Why a finished call does not go to retailCRM's history ('' when it does)."""
    if call.is_internal:
        return "an internal call"
    if not payloads.remote_phone(call):
        return "the other party's number is unknown"
    if call.answered_at is None and call.end_cause == "answered_elsewhere":
        # The leg that answered is uploaded; this ringing phone is not a missed call.
        return "answered on another phone"
    if row.routing == CrmCallSync.Routing.REDIRECTED:
        return "redirected to the responsible manager (their leg is uploaded)"
    return ""


def enter_outbox(row: CrmCallSync, call: Call) -> bool:
    """Put a finished call in the outbox once; True when it is newly there and to be uploaded.

    A missed call whose caller may still be leaving a voicemail enters it held: not due
    before ``upload_next_at``, looked at again until ``record_wait_until`` (see ``_hold``).
    """
    row.refresh_from_db(fields=["routing", "outbox_at"])
    if row.outbox_at is not None:
        return False
    reason = upload_skip_reason(call, row)
    now = timezone.now()
    fields = {"outbox_at": now, "upload_skipped": reason}
    wait_until = None if reason else record_wait_until(call, now)
    if wait_until is not None:
        fields.update(record_wait_until=wait_until, upload_next_at=min(wait_until, now + RECORD_RECHECK))
    entered = CrmCallSync.objects.filter(pk=row.pk, outbox_at__isnull=True).update(**fields)
    return bool(entered) and not reason


def record_wait_until(call: Call, now=None):
    """Until when the upload of this finished call waits for its audio (a voicemail being left); None: no wait.

    The voicemail lookup just after a missed call ends almost never finds the message: the
    caller is still recording it. So such a call waits, up to RETAILCRM_VOICEMAIL_WAIT_SECONDS
    after it ended; an answered or outgoing call, or one no audio source could get audio for, never does.
    """
    seconds = settings.RETAILCRM_VOICEMAIL_WAIT_SECONDS
    if seconds <= 0 or call.answered_at is not None or call.direction != Call.Direction.INBOUND:
        return None
    until = (call.ended_at or now or timezone.now()) + timedelta(seconds=seconds)
    if until <= (now or timezone.now()) or not recordings.awaits_audio(call):
        return None
    return until


@dataclass
class UploadReport:
    uploaded: int = 0
    duplicates: int = 0
    refused: int = 0
    batches: int = 0
    held: int = 0  # missed calls still waiting for their voicemail (looked at again later)


def _due_outbox(integration_id: int):
    now = timezone.now()
    return (
        CrmCallSync.objects.filter(
            integration_id=integration_id, outbox_at__isnull=False, uploaded_at__isnull=True, upload_skipped=""
        )
        .filter(Q(upload_next_at__isnull=True) | Q(upload_next_at__lte=now))
        .filter(Q(upload_claimed_until__isnull=True) | Q(upload_claimed_until__lt=now))
    )


def claim_batch(integration_id: int, token: str, size: int = MAX_CALLS_PER_UPLOAD) -> list[CrmCallSync]:
    """Claim up to ``size`` due rows for this worker; concurrent workers get disjoint batches."""
    with transaction.atomic():
        candidates = _due_outbox(integration_id).order_by("outbox_at", "id")
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        ids = list(candidates.values_list("id", flat=True)[:size])
        if not ids:
            return []
        # The conditional UPDATE decides (SQLite has no SKIP LOCKED; it locks the whole file).
        _due_outbox(integration_id).filter(pk__in=ids).update(
            upload_claimed_until=Now() + CLAIM_LEASE, upload_claim=token
        )
    return list(
        CrmCallSync.objects.filter(upload_claim=token).select_related("call", "call__agent").order_by("outbox_at", "id")
    )


def upload_outbox(integration_id: int, max_batches: int | None = None) -> UploadReport:
    """Upload due finished calls in batches until the outbox is empty (or retailCRM is unavailable)."""
    report = UploadReport()
    integration = RetailCrmIntegration.objects.filter(pk=integration_id, enabled=True).first()
    if integration is None:
        return report
    client = client_for(integration)
    current = [""]  # the batch being uploaded: its claim is kept alive while the request waits

    def renew():
        if current[0]:
            CrmCallSync.objects.filter(upload_claim=current[0]).update(upload_claimed_until=Now() + CLAIM_LEASE)

    with keeper.keep(f"the upload claims of integration {integration_id}", renew):
        _drain(integration_id, integration, client, report, current, max_batches)
    return report


def _drain(integration_id: int, integration, client, report: UploadReport, current: list[str],
           max_batches: int | None) -> None:
    resumed = False
    while max_batches is None or report.batches < max_batches:
        token = current[0] = uuid.uuid4().hex
        rows = claim_batch(integration_id, token)
        if not rows:
            break
        record_urls = {row.pk: recordings.record_url_for(row.call) for row in rows}
        held = _hold([row for row in rows if _still_waiting(row, record_urls[row.pk])], token)
        report.held += len(held)
        rows = [row for row in rows if row.pk not in held]
        if not rows:
            continue  # held rows are not due again before their next look: the loop ends
        report.batches += 1
        try:
            _upload_rows(client, integration, rows, token, report, record_urls)
        except RetailCrmError as exc:
            if _try_later(exc):
                raise _postpone(rows, [token], exc) from exc
            if len(rows) == 1:
                _refuse(rows[0], token, exc)
                report.refused += 1
            else:
                _upload_one_by_one(client, integration, rows, token, report, exc, record_urls)
        else:
            resumed = resumed or bool(_resume_postponed(integration_id))
        _refresh_crm_sync_state([row.call_id for row in rows])


def _still_waiting(row: CrmCallSync, record_url: str | None) -> bool:
    """A held call whose audio has not come yet, within its wait: not uploaded this time."""
    return record_url is None and row.record_wait_until is not None and row.record_wait_until > timezone.now()


def _hold(rows: list[CrmCallSync], token: str) -> set[int]:
    """Give back the claim on calls still waiting for their voicemail; the next look is RECORD_RECHECK away
    (or at the end of the wait, when the call is uploaded whatever it found). Returns their ids."""
    ids = {row.pk for row in rows}
    if ids:
        CrmCallSync.objects.filter(pk__in=ids, upload_claim=token).update(
            upload_claim="", upload_claimed_until=None,
            upload_next_at=Least(F("record_wait_until"), Value(timezone.now() + RECORD_RECHECK)),
        )
    return ids


def _resume_postponed(integration_id: int) -> int:
    """retailCRM just took a batch, so it is back: calls still waiting out an earlier failure's backoff
    (up to BACKOFF_CAP after a long outage) go in this drain instead. Calls waiting for their voicemail
    keep their own pace (every look asks the PBX)."""
    return CrmCallSync.objects.filter(
        integration_id=integration_id, outbox_at__isnull=False, uploaded_at__isnull=True, upload_skipped="",
        upload_next_at__gt=Now(),
    ).exclude(record_wait_until__gt=Now()).update(upload_next_at=None)


def _try_later(exc: RetailCrmError) -> bool:
    """Down, slowing us down, or a key an admin has to fix: the same request can succeed later."""
    return exc.retryable or isinstance(exc, RetailCrmAuthError)


def _upload_one_by_one(client, integration, rows, token: str, report: UploadReport, exc: RetailCrmError,
                       record_urls: dict[int, str | None]) -> None:
    """A batch refused as a whole: one bad call must not hold back the others."""
    logger.warning("retailCRM refused a batch of %s calls (%s); sending them one by one", len(rows), exc)
    for index, row in enumerate(rows):
        try:
            _upload_rows(client, integration, [row], token, report, record_urls)
        except RetailCrmError as single_exc:
            if _try_later(single_exc):
                raise _postpone(rows[index:], [token], single_exc) from single_exc
            _refuse(row, token, single_exc)
            report.refused += 1


def _records(integration, rows: list[CrmCallSync], record_urls: dict[int, str | None]) -> list[dict]:
    records = []
    for row in rows:
        site, external_phone = shop_of(row, row.call, integration)
        records.append(payloads.upload_record(
            row.call, time_zone=integration.time_zone, site=site, external_phone=external_phone,
            record_url=record_urls.get(row.pk),
        ))
    return records


def _upload_rows(client, integration, rows: list[CrmCallSync], token: str, report: UploadReport,
                 record_urls: dict[int, str | None]) -> None:
    records = _records(integration, rows, record_urls)
    answer = client.upload_calls(records)
    duplicates = {str(x) for x in (answer.get("duplicateCalls") or [])}
    processed = answer.get("processedCallsCount")
    if isinstance(processed, int) and processed + len(duplicates) != len(records):
        logger.warning("retailCRM processed %s of %s calls (%s duplicates)", processed, len(records), len(duplicates))
    now = timezone.now()
    ids = [row.pk for row in rows]
    duplicate_ids = [row.pk for row, record in zip(rows, records) if record["externalId"] in duplicates]
    mine = CrmCallSync.objects.filter(pk__in=ids, upload_claim=token)
    mine.filter(pk__in=duplicate_ids).update(was_duplicate=True)
    mine.update(uploaded_at=now, upload_claim="", upload_claimed_until=None, upload_next_at=None, last_error="")
    report.uploaded += len(rows) - len(duplicate_ids)
    report.duplicates += len(duplicate_ids)


def _postpone(rows: list[CrmCallSync], tokens: list[str], exc: RetailCrmError) -> RetryLater:
    attempts = max(row.upload_attempts for row in rows) + 1
    delay = backoff(attempts)
    CrmCallSync.objects.filter(pk__in=[row.pk for row in rows], upload_claim__in=tokens).update(
        upload_claim="", upload_claimed_until=None, upload_attempts=attempts,
        upload_next_at=timezone.now() + timedelta(seconds=delay), last_error=str(exc)[:2000],
        last_error_at=timezone.now(),
    )
    _refresh_crm_sync_state([row.call_id for row in rows])
    return RetryLater(str(exc), delay)


def _refuse(row: CrmCallSync, token: str, exc: RetailCrmError) -> None:
    logger.warning("retailCRM refused call %s: %s", row.call_id, exc)
    CrmCallSync.objects.filter(pk=row.pk, upload_claim=token).update(
        upload_claim="", upload_claimed_until=None, upload_skipped=f"retailCRM refused it: {exc}"[:300],
        last_error=str(exc)[:2000], last_error_at=timezone.now(),
    )


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


def outbox_size(integration_id: int) -> int:
    return CrmCallSync.objects.filter(
        integration_id=integration_id, outbox_at__isnull=False, uploaded_at__isnull=True, upload_skipped=""
    ).count()


# --- the sweep ----------------------------------------------------------------------------------


@dataclass
class SweepReport:
    calls: list[int] = field(default_factory=list)
    integrations: list[int] = field(default_factory=list)


def sweep() -> SweepReport:
    """What the periodic task re-queues: lost call syncs, due hangup events, due outboxes."""
    now = timezone.now()
    report = SweepReport()
    never_outboxed = (
        Call.objects.filter(
            state=Call.State.ENDED, crm_sync_state__in=[Call.CrmSync.PENDING, Call.CrmSync.FAILED],
            ended_at__lt=now - SWEEP_GRACE, ended_at__gte=now - SWEEP_HORIZON,
        )
        .filter(~Exists(CrmCallSync.objects.filter(call=OuterRef("pk"), outbox_at__isnull=False)))
        .order_by("ended_at")
        .values_list("id", flat=True)[:SWEEP_LIMIT]
    )
    hangup_due = (
        CrmCallSync.objects.filter(
            integration__enabled=True, in_event_sent_at__isnull=False, hangup_event_sent_at__isnull=True,
            events_skipped="", call__state=Call.State.ENDED, call__ended_at__gte=now - SWEEP_HORIZON,
        )
        .filter(Q(events_next_at__isnull=True) | Q(events_next_at__lte=now))
        .values_list("call_id", flat=True)[:SWEEP_LIMIT]
    )
    # Whatever the call's upload did: a call can be uploaded while its start event still waits on a retry
    # (retailCRM's limit unreadable, the retry task lost with the broker), and the event is still due.
    start_unsent = CrmCallSync.objects.filter(call=OuterRef("pk"), in_event_sent_at__isnull=True, events_skipped="")
    start_due = (
        Call.objects.filter(
            created_at__gte=now - SWEEP_HORIZON, updated_at__lt=now - START_EVENT_SWEEP_GRACE, is_internal=False,
        )
        .exclude(crm_sync_state=Call.CrmSync.SKIPPED)
        .filter(Q(state__in=ACTIVE_STATES) | Q(state=Call.State.ENDED, ended_at__gte=now - START_EVENT_STALE_AFTER))
        .filter(~Exists(CrmCallSync.objects.filter(call=OuterRef("pk")))
                | Exists(start_unsent.filter(Q(events_next_at__isnull=True) | Q(events_next_at__lte=now))))
        .order_by("created_at")
        .values_list("id", flat=True)[:SWEEP_LIMIT]
    )
    report.calls = sorted(set(never_outboxed) | set(hangup_due) | set(start_due))
    for integration in RetailCrmIntegration.objects.filter(enabled=True):
        if _due_outbox(integration.pk).exists():
            report.integrations.append(integration.pk)
    return report


# --- registration --------------------------------------------------------------------------------


def registered_agents():
    """Agents retailCRM can know: both a retailCRM user id and a code."""
    return Agent.objects.exclude(extension_code="").exclude(retailcrm_user_id="").order_by("extension_code")


def registration_payload(integration: RetailCrmIntegration) -> dict:
    return payloads.registration_payload(integration, registered_agents(), integration.external_phones.all())


def register_integration(integration: RetailCrmIntegration) -> dict:
    """Create or update the module in retailCRM; keeps what it said it does not know."""
    try:
        answer = client_for(integration).edit_module(integration.module_code, registration_payload(integration))
    except RetailCrmError as exc:
        RetailCrmIntegration.objects.filter(pk=integration.pk).update(last_error=str(exc)[:2000])
        integration.last_error = str(exc)
        raise
    info = answer.get("info") if isinstance(answer.get("info"), dict) else {}
    fields = {
        "registered_at": timezone.now(),
        "last_error": "",
        "not_exist_user_ids": [str(x) for x in info.get("notExistUsersIds") or []],
        "not_exist_site_codes": [str(x) for x in info.get("notExistSiteCodes") or []],
    }
    RetailCrmIntegration.objects.filter(pk=integration.pk).update(**fields)
    for name, value in fields.items():
        setattr(integration, name, value)
    return answer


def integrations_to_reregister():
    """Enabled integrations, and disabled ones retailCRM knows (so it hears they are inactive)."""
    return RetailCrmIntegration.objects.filter(Q(enabled=True) | Q(registered_at__isnull=False))


# --- endpoints retailCRM calls -----------------------------------------------------------------


def integration_for_client_id(client_id: str) -> RetailCrmIntegration | None:
    """The enabled integration with this clientId: one indexed query on its keyed digest.

    The clientId is stored encrypted, so it is matched by ``client_id_digest``.
    The index compares digests, not clientIds, and a digest cannot be computed
    without the field key: how long a lookup takes says nothing about how close
    a guess came. A row found by an old key's digest is moved to the newest key.
    """
    if not client_id:
        return None
    digests = client_id_digests(client_id)
    integration = RetailCrmIntegration.objects.filter(enabled=True, client_id_digest__in=digests).first()
    if integration is not None and integration.client_id_digest != digests[0]:
        RetailCrmIntegration.objects.filter(pk=integration.pk).update(client_id_digest=digests[0])
        integration.client_id_digest = digests[0]
    return integration


def agent_for_code(code: str) -> Agent | None:
    if not code:
        return None
    return Agent.objects.filter(extension_code=code).select_related("user").first()


def terminal_for_integration(agent: Agent, integration: RetailCrmIntegration) -> Terminal | None:
    """The agent's dialling terminal among the accounts this integration serves (all, when it names none).

    The console's choice too (``telephony.control.dialling_terminal``): the admin's, else one fixed rule.
    """
    from telephony.control import dialling_terminal

    account_ids = list(integration.accounts.values_list("id", flat=True))
    return dialling_terminal(agent, account_ids or None)


def present_external_phone(terminal: Terminal, external_phone: str) -> bool:
    """Show the shop's number as the caller-ID of the next call from ``terminal``.

    Through the PBXs' caller-ID presenters (``telephony.plugins``): only the Istra End
    User API (myIstra) can set a user's caller-ID, so when the terminal's agent has
    an End User account on the same platform, it is set there (and put back once the
    call is set up, see ``telephony.providers.istra_enduser.callerid``). Otherwise, or
    when the PBX refuses, this returns False and the PBX presents its default caller-ID.
    """
    from telephony.plugins import present_caller_id

    return present_caller_id(terminal, external_phone)


# makeCallUrl reads numbers in the integration's country on every click.
_regions = BriefCache("retailcrm-integration-phone-region", watch=(ExternalPhone, RetailCrmIntegration, PbxAccount))


@dataclass
class MakeCallNumbers:
    phone: str  # E.164
    external_phone: str = ""  # E.164, or '' (none given, or one that is no phone number)
    warning: str = ""  # what was wrong with externalPhone, for the answer


def make_call_numbers(integration: RetailCrmIntegration, phone: str, external_phone: str = "") -> MakeCallNumbers:
    """makeCallUrl's ``phone`` and ``externalPhone`` in E.164, read in the shop's country.

    retailCRM sends ``phone`` as the customer's card has it, often without a country
    ("8 912 345-67-89" in a Russian shop): it is read in the country of the shop the
    click came from (``externalPhone``), else the integration's (``integration_region``).
    An ``externalPhone`` that is no phone number only costs the caller-ID change: the call
    is placed and ``warning`` says why the caller-ID stayed. UnusablePhoneNumber for ``phone``.
    """
    numbers = MakeCallNumbers(phone="")
    fallback = integration_region(integration) or None
    if external_phone:
        try:
            numbers.external_phone = to_e164(external_phone, fallback)
        except UnusablePhoneNumber as exc:
            numbers.warning = f"externalPhone: {exc}; the call is placed with the PBX's usual caller-ID"
    numbers.phone = to_e164(phone, region_of(numbers.external_phone) or fallback)
    return numbers


def integration_region(integration: RetailCrmIntegration) -> str:
    """The country numbers without one are read in for this integration; '' for DEFAULT_PHONE_REGION.

    The one country of all its shops' numbers, else the one default region of the PBX accounts
    it serves (all accounts when it names none); '' when there is none or they disagree.
    """
    def load() -> str:
        shops = {region_of(phone) for phone in integration.external_phones.values_list("phone", flat=True)} - {""}
        if len(shops) == 1:
            return shops.pop()
        accounts = integration.accounts.all() if integration.accounts.exists() else PbxAccount.objects.all()
        regions = {r.upper() for r in accounts.filter(enabled=True).exclude(default_region="")
                   .values_list("default_region", flat=True)}
        return regions.pop() if len(regions) == 1 else ""

    return _regions.get(integration.pk, load)


# makeCallUrl looks the terminal up on every click (its view keeps the integration and agent briefly too).
_terminals = BriefCache("retailcrm-terminal-for-integration", watch=(Terminal, PbxAccount, Agent, RetailCrmIntegration))


def make_call(integration: RetailCrmIntegration, agent: Agent, phone_e164: str, external_phone: str = "") -> dict:
    """Dial ``phone_e164`` from the agent's terminal; raises ProviderError when the PBX refuses."""
    from telephony.control import NoTerminal, place_call

    terminal = _terminals.get((agent.pk, integration.pk), lambda: terminal_for_integration(agent, integration))
    if terminal is None:
        raise NoTerminal(f"{agent} has no active terminal on a PBX account this retailCRM serves")
    presented = present_external_phone(terminal, external_phone) if external_phone else False
    answer = place_call(terminal, phone_e164)
    if external_phone:
        remember_click_to_call(terminal.pk, phone_e164, external_phone)
    return {"terminal": terminal.pbx_id, "callerIdPresented": presented, "pbx": answer}


def change_user_status(agent: Agent, status: str) -> Agent:
    """Store the status retailCRM reports, push it to consoles; routing reads it."""
    from accounts.services import set_agent_status

    return set_agent_status(agent, status, source="retailcrm")


# A click-to-call from retailCRM names the shop's number; the outgoing call that follows
# does not carry it (the PBX does not know about shops), so it is remembered briefly
# and given to that call's ``out`` event and upload.
CLICK_TO_CALL_MEMORY_SECONDS = 120


def _click_to_call_key(terminal_id: int, phone_e164: str) -> str:
    return f"ctihub:retailcrm:c2c:{terminal_id}:{phone_e164}"


def remember_click_to_call(terminal_id: int, phone_e164: str, external_phone: str) -> None:
    from crm_sync.retailcrm.ratelimit import _redis

    try:
        _redis().set(_click_to_call_key(terminal_id, phone_e164), external_phone, ex=CLICK_TO_CALL_MEMORY_SECONDS)
    except Exception:  # only the shop label is lost
        logger.warning("could not remember the shop of a click-to-call", exc_info=True)


def recall_click_to_call(terminal_id: int, phone_e164: str) -> str | None:
    from crm_sync.retailcrm.ratelimit import _redis

    if not phone_e164:
        return None
    try:
        value = _redis().get(_click_to_call_key(terminal_id, phone_e164))
    except Exception:
        return None
    return value.decode() if value else None


# --- responsible manager routing --------------------------------------------------------------


def route_call(integration_id: int, call_id: int) -> str:
    """Ask retailCRM for the caller's manager; redirect the shared line's call to them if free."""
    from telephony.control import call_action
    from telephony.providers.base import ProviderError
    from telephony.publish import publish_call

    integration = RetailCrmIntegration.objects.filter(pk=integration_id, enabled=True, manager_routing=True).first()
    call = Call.objects.filter(pk=call_id).select_related("account").first()
    if integration is None or call is None:
        return "gone"
    row, _ = CrmCallSync.objects.get_or_create(integration=integration, call=call)
    if not CrmCallSync.objects.filter(pk=row.pk, routing=CrmCallSync.Routing.NONE).update(
        routing=CrmCallSync.Routing.LOOKING
    ):
        return "already routed"
    phone = payloads.remote_phone(call)
    if call.state != Call.State.RINGING or not phone:
        return _routing_done(row, CrmCallSync.Routing.RANG_AS_USUAL)
    try:
        answer = client_for(integration).responsible_manager(phone)
    except RetailCrmError as exc:
        # The call must ring somewhere: without an answer it rings as usual.
        return _routing_done(row, CrmCallSync.Routing.RANG_AS_USUAL, error=str(exc))
    manager = answer.get("manager") if isinstance(answer.get("manager"), dict) else None
    CrmCallSync.objects.filter(pk=row.pk).update(
        looked_up_at=timezone.now(), crm_manager=manager,
        crm_customer=answer.get("customer") if isinstance(answer.get("customer"), dict) else None,
        crm_links=answer.get("links") if isinstance(answer.get("links"), dict) else None,
    )
    agent, extension = free_manager_extension(manager, call.account_id)
    outcome = CrmCallSync.Routing.RANG_AS_USUAL
    error = ""
    if agent is not None:
        call.refresh_from_db()
        if call.state == Call.State.RINGING:
            try:
                call_action(call, "redirect", {"destination": extension})
                outcome = CrmCallSync.Routing.REDIRECTED
            except ProviderError as exc:
                outcome, error = CrmCallSync.Routing.FAILED, f"redirect to {extension} failed: {exc}"
    result = _routing_done(row, outcome, error=error, agent=agent if outcome == CrmCallSync.Routing.REDIRECTED else None)
    publish_call(call_id)  # the card now shows the customer and the links
    return result


def _routing_done(row: CrmCallSync, outcome: str, error: str = "", agent: Agent | None = None) -> str:
    fields = {"routing": outcome, "routed_agent": agent}
    if error:
        fields.update(last_error=error[:2000], last_error_at=timezone.now())
        logger.warning("routing of call %s: %s", row.call_id, error)
    CrmCallSync.objects.filter(pk=row.pk).update(**fields)
    return outcome


def free_manager_extension(manager: dict | None, account_id: int) -> tuple[Agent | None, str]:
    """The manager's agent and extension on this account, if they can take the call now."""
    if not manager:
        return None, ""
    match = Q()
    if manager.get("id") not in (None, ""):
        match |= Q(retailcrm_user_id=str(manager["id"]))
    if manager.get("code"):
        match |= Q(extension_code=str(manager["code"]))
    if not match:
        return None, ""
    agent = Agent.objects.filter(match).first()
    # retailCRM only answers free managers; ctihub also knows statuses set since and calls in progress.
    if agent is None or agent.status != Agent.Status.FREE:
        return None, ""
    if Call.objects.filter(agent=agent, state__in=ACTIVE_STATES).exists():
        return None, ""
    terminal = (
        agent.terminals.filter(account_id=account_id, active=True).exclude(extension="").order_by("id").first()
    )
    if terminal is None:
        return None, ""
    return agent, terminal.extension


# --- the card --------------------------------------------------------------------------------------


def card_fields(call: Call) -> dict:
    """What a call card shows from retailCRM: the customer, their manager and links (or None)."""
    return card_fields_many([call])[call.pk]


def card_fields_many(calls: list[Call]) -> dict[int, dict]:
    """``card_fields`` for many calls, in two queries at most (none for accounts no CRM serves)."""
    fields: dict[int, dict] = {call.pk: {"crm": None} for call in calls}
    # Only incoming calls are looked up, and only by responsible-manager routing: an account no routing
    # integration serves has nothing to show, and its cards (every frame's) cost no query.
    looked_up = [c for c in calls if c.pk and c.direction == Call.Direction.INBOUND
                 and serving_integrations(c.account_id)[1]]
    if not looked_up:
        return fields
    found: dict[int, CrmCallSync] = {}
    for row in CrmCallSync.objects.filter(
        call_id__in={c.pk for c in looked_up}, looked_up_at__isnull=False
    ).order_by("looked_up_at"):
        found[row.call_id] = row  # the latest lookup wins
    # The manager's own leg of a redirected call: show what the lookup for the shared line found.
    legs = [c for c in looked_up if c.pk not in found and c.agent_id and c.remote_number_e164]
    if legs:
        routed = CrmCallSync.objects.filter(
            routed_agent_id__in={c.agent_id for c in legs}, routing=CrmCallSync.Routing.REDIRECTED,
            call__account_id__in={c.account_id for c in legs},
            call__remote_number_e164__in={c.remote_number_e164 for c in legs},
            looked_up_at__gte=timezone.now() - ROUTED_CARD_WINDOW,
        ).select_related("call").order_by("looked_up_at")
        latest = {(r.routed_agent_id, r.call.account_id, r.call.remote_number_e164): r for r in routed}
        for call in legs:
            row = latest.get((call.agent_id, call.account_id, call.remote_number_e164))
            if row is not None:
                found[call.pk] = row
    for call in looked_up:
        row = found.get(call.pk)
        if row is not None:
            fields[call.pk] = {"crm": {"customer": row.crm_customer, "manager": row.crm_manager,
                                       "links": row.crm_links, "routing": row.routing}}
    return fields
