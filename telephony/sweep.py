"""The stale-call sweep: a call the PBX has gone silent on for too long is ended by the hub.

A call's end can be lost for good: a myCrm socket down while the call ended has no
call list to read after the reconnect, and without an End User account of the same
user (see ``telephony.providers.istra_enduser.backfill``) nothing else tells us.
Left live, such a call keeps its card on the consoles, never reaches retailCRM's
history, and swallows the next call that reuses its Istra id. So every
``CALL_SWEEP_SECONDS`` (beat: ``telephony.tasks.sweep_stale_calls_task``) each live
call that has had no news for longer than its state's bound
(``CALL_STALE_<STATE>_SECONDS``) is ended, for every kind of account: the fallback
for myCrm, a safety net for the others.

"No news" is read from ``Call.updated_at``: only ``telephony.domain`` bumps it,
when it applies a change, and when a frame tells a live call as it is (a no-news
frame, a Telepo snapshot listing it unchanged): then only ``updated_at`` moves, at
most every ``STILL_LIVE_EVERY``. A replayed or older frame is no news.
The CRM side writes ``crm_sync_state`` with ``QuerySet.update()``, which leaves
``auto_now`` fields alone, and the domain's rename of a recycled id saves only
``pbx_call_id``; so no separate "last news" column is needed. A new writer of
calls must keep it that way (or this sweep ends calls too late).

A swept call is ended through the domain like any other (card, hangup event,
upload), with end cause ``swept`` and with what is known: answered if it was seen
answered, ended at its last news (when it was last known alive; the PBX ended it at
some unknown moment after, and dating it "now" would add up to the whole bound to
its ring or talk time). The domain never merges a new call into a swept one and
ignores late frames of it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from telephony import updates as u
from telephony.domain import apply_call_update
from telephony.models import Call

logger = logging.getLogger(__name__)

SWEPT_KIND = "ctihub.swept"
# One sweep's share: a backlog (the hub was down for a day) is worked off over a few runs.
SWEEP_LIMIT = 500


def stale_after() -> dict[str, timedelta]:
    """How long each live state may go without news before its call is swept."""
    return {
        Call.State.RINGING: timedelta(seconds=settings.CALL_STALE_RINGING_SECONDS),
        Call.State.DIALING: timedelta(seconds=settings.CALL_STALE_DIALING_SECONDS),
        Call.State.TALKING: timedelta(seconds=settings.CALL_STALE_TALKING_SECONDS),
        Call.State.HELD: timedelta(seconds=settings.CALL_STALE_HELD_SECONDS),
    }


def sweep_stale_calls(now=None) -> list[int]:
    """End every live call without news for longer than its state's bound; the ids of the calls ended."""
    now = now or timezone.now()
    bounds = stale_after()
    stale = Q()
    for state, bound in bounds.items():
        stale |= Q(state=state, updated_at__lt=now - bound)
    candidates = list(Call.objects.filter(stale).order_by("updated_at").values_list("pk", flat=True)[:SWEEP_LIMIT])
    swept = []
    for call_id in candidates:
        if _sweep_one(call_id, now, bounds):
            swept.append(call_id)
    return swept


def _sweep_one(call_id: int, now, bounds: dict[str, timedelta]) -> bool:
    with transaction.atomic():
        # Looked at again under the row lock: a frame applied since the query above is news.
        call = Call.objects.select_for_update().filter(pk=call_id, state__in=list(bounds)).first()
        if call is None or call.updated_at >= now - bounds[call.state]:
            return False
        # Never before the call began (its start may be the PBX's clock, the last news is ours).
        last_news = max(call.updated_at, call.answered_at or call.created_at, call.created_at)
        applied = apply_call_update(u.CallUpdate(
            account_id=call.account_id,
            pbx_call_id=call.pbx_call_id,
            state=u.ENDED,
            kind=SWEPT_KIND,
            payload={"state": call.state, "last_news_at": last_news.isoformat(),
                     "stale_after_seconds": int(bounds[call.state].total_seconds())},
            occurred_at=last_news,
            end_cause=u.END_SWEPT,
            # One sweep per call, so a second run is a replay; the row's id, not just "swept", for the PBX
            # may reuse the call id, and the next call to carry it may need sweeping too.
            frame_id=f"swept:{call.pk}",
        ))
    if not applied.changed:
        return False
    logger.warning("call %s swept: %s with no news from the PBX since %s", call_id, call.state,
                   last_news.isoformat(), extra={"account_id": call.account_id, "call_id": call_id})
    return True
