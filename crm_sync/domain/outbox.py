"""The outbox: finished calls uploaded to retailCRM's history in batches, each row under a claim,
held while a voicemail may still be left."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Least, Now
from django.utils import timezone

from crm_sync import claims, recordings
from crm_sync.domain.common import RetryLater, _refresh_crm_sync_state, backoff, client_for
from crm_sync.domain.shops import shop_of
from crm_sync.models import CrmCallSync, RetailCrmIntegration
from crm_sync.retailcrm import payloads
from crm_sync.retailcrm.client import MAX_CALLS_PER_UPLOAD, RetailCrmAuthError, RetailCrmError
from telephony.models import Call

logger = logging.getLogger(__name__)

# A missed call whose caller may be leaving a voicemail is looked at again this often until the message is
# there or RETAILCRM_VOICEMAIL_WAIT_SECONDS passed (the sweep finds it due; each look asks the PBX).
RECORD_RECHECK = timedelta(seconds=10)


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
            upload_claimed_until=Now() + claims.CLAIM_LEASE, upload_claim=token
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
            CrmCallSync.objects.filter(upload_claim=current[0]).update(
                upload_claimed_until=Now() + claims.CLAIM_LEASE)

    with claims.keeper.keep(f"the upload claims of integration {integration_id}", renew):
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


def outbox_size(integration_id: int) -> int:
    return CrmCallSync.objects.filter(
        integration_id=integration_id, outbox_at__isnull=False, uploaded_at__isnull=True, upload_skipped=""
    ).count()
