"""Bring a Telepo user's calls to the PBX's snapshot, so a lost webhook never leaves a call stuck.

Runs on worker start, on a schedule, after a webhook gap (a seq_num jump), after
every applied webhook (to pick up the new stateToken and allowed actions) and
after a stateToken conflict. Everything goes through ``apply_call_update``.

Each call of a snapshot is read on its own: one that cannot be read is skipped
(and counted in the report), the others apply. A status ctihub does not know
keeps its call live in its last known state (``branches.settle_snapshot``).

A snapshot describes the PBX at the moment it was asked. A call that changed
here after that moment (a webhook got in first, or a snapshot or action answer
asked later) is left alone: the older snapshot must not undo it, though an
answer it saw still counts. With ``fullState``, a call we think is live but
the snapshot no longer lists has ended at the PBX and is ended here, unless
Telepo spoke of it less than ``ABSENCE_GRACE`` ago (see there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from telephony import updates as u
from telephony.domain import ACTIVE_STATES, AppliedUpdate, apply_call_update
from telephony.models import Call, CallEvent, PbxAccount
from telephony.providers.base import ProviderError
from telephony.providers.telepo import branches
from telephony.providers.telepo.frames import SNAPSHOT_KIND, parse_call_state, parse_snapshot
from telephony.status import set_account_status
from telephony.updates import CallUpdate, FrameRejected

logger = logging.getLogger(__name__)

RECONCILE_DEBOUNCE_SECONDS = 0.5
DEBOUNCE_KEY = "ctihub:telepo:reconcile:{}:{}"
# Telepo posts a call's webhooks one after another, so they lag behind its snapshot: a call the
# snapshot no longer lists may still have its TERMINATED on the way, and only that message tells
# an answered call from a missed one (absence says neither). A call Telepo spoke of within this
# grace is left for a second look once the grace is over, instead of being ended as missed.
ABSENCE_GRACE = timedelta(seconds=5)


@dataclass
class ReconcileReport:
    users: int = 0
    applied: int = 0
    ended: int = 0
    # Skipped, each for its reason: the call already was as the snapshot says; the call changed since
    # the snapshot was asked (its news wins); the snapshot's call could not be read.
    unchanged: int = 0
    older: int = 0
    unreadable: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.unchanged + self.older + self.unreadable

    def add(self, other: ReconcileReport) -> None:
        self.users += other.users
        self.applied += other.applied
        self.ended += other.ended
        self.unchanged += other.unchanged
        self.older += other.older
        self.unreadable += other.unreadable
        self.errors.extend(other.errors)

    def counts(self) -> dict[str, int]:
        return {"users": self.users, "applied": self.applied, "ended": self.ended, "unchanged": self.unchanged,
                "older": self.older, "unreadable": self.unreadable, "errors": len(self.errors)}


def reconcile_account(account: PbxAccount) -> ReconcileReport:
    """Every active Telepo user of the account; the account's status says how it went."""
    from telephony.providers import provider_for

    report = ReconcileReport()
    provider = provider_for(account)
    permanent = False
    try:
        for user_id in account.terminals.filter(active=True).values_list("pbx_id", flat=True):
            try:
                report.add(reconcile_user(account, user_id, provider=provider))
            except ProviderError as exc:
                permanent = permanent or exc.permanent
                report.errors.append(f"{user_id}: {exc}")
    finally:
        provider.close()
    _report_status(account, report, permanent)
    return report


def _report_status(account: PbxAccount, report: ReconcileReport, permanent: bool) -> None:
    if not report.errors:
        set_account_status(account.pk, PbxAccount.Status.CONNECTED)
        return
    status = PbxAccount.Status.FAILED if permanent else PbxAccount.Status.DEGRADED
    set_account_status(account.pk, status, "Telepo snapshot failed for " + "; ".join(report.errors))


def reconcile_user(account: PbxAccount, user_id: str, provider=None) -> ReconcileReport:
    """Fetch the user's snapshot and apply it; raises ProviderError when the PBX cannot say."""
    from telephony.providers import provider_for

    own = provider is None
    provider = provider or provider_for(account)
    fetched_at = timezone.now()
    try:
        body = provider.snapshot(user_id)
    finally:
        if own:
            provider.close()
    try:
        parsed = parse_snapshot(body, account.pk, user_id, fetched_at)
    except FrameRejected as exc:
        raise ProviderError(f"Telepo's snapshot of {user_id} makes no sense: {exc}") from None
    report = ReconcileReport(users=1, unreadable=len(parsed.skipped))
    for update in parsed.updates:
        _count(report, *_apply_unless_newer(update, fetched_at))
    # A call the snapshot lists but we could not read has not ended; one we could not even
    # name might be any of the calls not listed, so then no absence proves an end.
    if body.get("fullState", True) is not False and not parsed.unnamed_skipped:
        look_again = False
        for call in _live_calls_missing(account, user_id, parsed.listed, fetched_at):
            if call.updated_at > fetched_at - ABSENCE_GRACE:
                look_again = True
            elif apply_unless_newer(_ended_at_pbx(call, user_id, fetched_at), fetched_at):
                report.ended += 1
        if look_again:
            from telephony.providers.telepo import tasks

            tasks.enqueue(tasks.reconcile_user_task, account.pk, user_id, countdown=ABSENCE_GRACE.total_seconds())
    # Every applied webhook asks for one: debug, not info. Says why a card kept what it had.
    logger.debug("Telepo snapshot of %s: %s", user_id, report.counts(), extra={"account_id": account.pk})
    return report


def apply_call_state(account: PbxAccount, user_id: str, state: dict, fetched_at: datetime) -> AppliedUpdate | None:
    """One call state Telepo answered (an action's answer): applied unless something newer came meanwhile."""
    return apply_unless_newer(parse_call_state(state, account.pk, user_id, fetched_at), fetched_at)


def apply_unless_newer(update: CallUpdate, fetched_at: datetime) -> AppliedUpdate | None:
    """The update as the call's branches settle it (an unknown status keeps the call's state, a call
    only a voicemail or a queue took is not answered), unless the call changed since ``fetched_at``."""
    return _apply_unless_newer(update, fetched_at)[0]


def _apply_unless_newer(update: CallUpdate, fetched_at: datetime) -> tuple[AppliedUpdate | None, bool]:
    """``apply_unless_newer``'s answer, and whether the call had changed since ``fetched_at``."""
    with transaction.atomic():
        current = branches.lock_call(update.account_id, update.pbx_call_id)
        if current is not None and _news_since(current, fetched_at):
            # Older than the call's news, but an answer it saw is still news (branches.snapshot_answer).
            answer = branches.snapshot_answer(update, current, fetched_at)
            if answer is None:
                return None, True
            # Written over newer news: its event is news as of now, not as of when it was asked (_news_since).
            return apply_call_update(replace(answer, occurred_at=max(fetched_at, timezone.now()))), True
        return apply_call_update(branches.settle_snapshot(update, current)), False


def _news_since(call: Call, fetched_at: datetime) -> bool:
    """True when what the call holds is newer than ``fetched_at``.

    A webhook is news as of when it was applied (``updated_at``: Telepo's timestamp is another clock); a
    snapshot or an action's answer as of when it was asked (its event's ``received_at``), however late it
    was written. Otherwise a snapshot asked before an action was sent, but written while the action was
    under way, made the action's answer look older than it and dropped it: the card stayed as it was
    until the next periodic reconcile. The call's newest event is its newest change (each change stores
    one, under the call's lock), and what it held before is older still: a snapshot is written only when
    newer than the call's news, and the answer an older one brings is news as of when it is written.
    """
    if call.updated_at < fetched_at:
        return False
    newest = CallEvent.objects.filter(call_id=call.pk).order_by("-id").values_list("kind", "received_at").first()
    return newest is None or newest[0] != SNAPSHOT_KIND or newest[1] >= fetched_at


def _count(report: ReconcileReport, applied: AppliedUpdate | None, older: bool) -> None:
    if applied is not None and applied.changed:
        report.applied += 1
    elif older:
        report.older += 1
    else:
        report.unchanged += 1


def _live_calls_missing(account: PbxAccount, user_id: str, listed: set[str], fetched_at: datetime):
    return (
        Call.objects.filter(account=account, terminal__pbx_id=user_id, state__in=ACTIVE_STATES,
                            updated_at__lt=fetched_at)
        .exclude(pbx_call_id__in=listed)
        .only("id", "account_id", "pbx_call_id", "direction", "updated_at", "answered_at")
    )


def _ended_at_pbx(call: Call, user_id: str, fetched_at: datetime) -> CallUpdate:
    return CallUpdate(
        account_id=call.account_id, pbx_call_id=call.pbx_call_id, state=u.ENDED, kind=SNAPSHOT_KIND,
        payload={"userId": user_id, "absentFromSnapshot": True}, occurred_at=fetched_at,
        frame_id=f"absent@{fetched_at.isoformat()}",
        # Gone while only a voicemail or a queue had it: the agent missed it, or a queue took it.
        end_cause=branches.absent_end_cause(call),
    )


def request_reconcile(account_id: int, user_id: str, delay: float = RECONCILE_DEBOUNCE_SECONDS) -> bool:
    """Reconcile the user soon; a burst of webhooks for one user makes one snapshot request."""
    from telephony.providers.telepo import tasks
    from telephony.sockets.supervisor import redis_client

    try:
        client = redis_client()
        try:
            first = client.set(DEBOUNCE_KEY.format(account_id, user_id), "1", nx=True, px=max(1, int(delay * 1000)))
        finally:
            client.close()
    except Exception:
        logger.warning("could not debounce a Telepo reconcile; queueing it anyway", exc_info=True)
        first = True
    if not first:
        return False
    return tasks.enqueue(tasks.reconcile_user_task, account_id, user_id, countdown=delay)
