"""Call-history backfill: calls the PBX logged that no socket told us about become calls.

Periodically (``tasks.backfill_enduser_accounts_task``) every enabled End User
account's call history is read and compared with the stored calls. An entry that
matches no stored call is applied through ``telephony.domain.apply_call_update``
(so it reaches the console's history and retailCRM like any other call).

How an entry is matched, so a call is never stored twice:

1. **Already backfilled**: the entry's own call id ``history:<callHistoryId>`` exists
   on the account (applying it again would be a no-op anyway).
2. **Recorded by a socket**: a call on a myCrm or myRCC account *of the same
   platform* (same host in the base URL) that is

   * on the same terminal (the End User terminal's ``abstractTerminalID`` equals the
     socket terminal's id, or the entry's ``userNumber`` is the terminal's
     extension), or taken by the agent who owns this End User account;
   * in the same direction;
   * with the same remote number (the same E.164, or the same digits for short
     internal numbers);
   * started within ``MATCH_TOLERANCE`` of the entry's timestamp (the PBX's log
     and our socket frames time the call from slightly different moments).

   Each stored call matches at most one entry (the nearest in time), so of two
   calls from one customer a minute apart, one seen by a socket and one not,
   only the one the socket missed is created.

A call the socket saw begin but never end (still ringing, dialling, talking or held
here: the socket was down when the PBX ended it) is not "seen": the entry that
matches it ends it, through the domain like any frame (its card, its hangup event
and its upload follow), with the entry's outcome and times (``frames.history_end_update``).
For that, an entry that matches a live call is taken as soon as it has ended.
To keep a new call from being taken for an old one, a live call only matches an
entry if it began before the entry ended (``LIVE_MATCH_SLACK``).

Entries that ended less than ``SETTLE_AFTER`` ago are not made into new calls
until the next run: a socket's frames for them may still be on their way. Entries
older than ``HORIZON`` are not looked at (the sweep would not upload them either).

Besides the periodic run, ``tasks.reconcile_after_reconnect_task`` runs this for
the End User account of a myCrm account's user (the same login on the same server)
right after each of the myCrm account's sockets (re)connects: myCrm has no list of
the calls alive to catch up from, so a call that ended while its socket was down
would otherwise stay live until the stale-call sweep (``telephony.sweep``) ends it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ctihub.lib.phones import e164_or_empty
from telephony.domain import apply_call_update
from telephony.models import Call, PbxAccount
from telephony.providers.istra_enduser import frames
from telephony.providers.istra_enduser.console import owner_agent_ids
from telephony.updates import FrameRejected

logger = logging.getLogger(__name__)

MATCH_TOLERANCE = timedelta(seconds=90)
# A live call began before the entry ended, give or take the PBX's and our clocks: a call that began
# later is a new call (the customer calling back), never the one the entry logged.
LIVE_MATCH_SLACK = timedelta(seconds=5)
# Shortened by the end-to-end tests (a real worker, so only the environment reaches it).
SETTLE_AFTER = timedelta(seconds=int(os.environ.get("ENDUSER_BACKFILL_SETTLE_SECONDS", "60")))
HORIZON = timedelta(days=2)
# Plain strings: read when the module is imported, which need not wait for every provider to register.
SOCKET_KINDS = ("istra_mycrm", "istra_myrcc")


@dataclass
class BackfillReport:
    entries: int = 0
    created: list[int] = field(default_factory=list)  # call ids
    ended_live: list[int] = field(default_factory=list)  # ids of socket calls the history ended
    already_backfilled: int = 0
    seen_by_socket: int = 0
    not_settled: int = 0
    too_old: int = 0

    def as_dict(self) -> dict:
        return {"entries": self.entries, "created": len(self.created), "ended_live": len(self.ended_live),
                "already_backfilled": self.already_backfilled, "seen_by_socket": self.seen_by_socket,
                "not_settled": self.not_settled, "too_old": self.too_old}


def platform_host(account: PbxAccount) -> str:
    return (urlsplit(account.base_url).netloc or "").lower()


def socket_accounts(account: PbxAccount) -> list[int]:
    return _on_platform_of(account, SOCKET_KINDS)


def enduser_accounts(account: PbxAccount) -> list[int]:
    """The End User accounts on the same platform as ``account`` (a socket account)."""
    return _on_platform_of(account, (PbxAccount.Kind.ISTRA_ENDUSER,))


def _on_platform_of(account: PbxAccount, kinds) -> list[int]:
    host = platform_host(account)
    return [a.pk for a in PbxAccount.objects.filter(kind__in=kinds).only("base_url") if platform_host(a) == host]


def enduser_account_for(account: PbxAccount) -> PbxAccount | None:
    """The enabled End User account of a socket account's user: the same login on the same server."""
    login = (account.login or "").strip()
    if not login:
        return None
    host = platform_host(account)
    same_login = PbxAccount.objects.filter(kind=PbxAccount.Kind.ISTRA_ENDUSER, enabled=True, login__iexact=login)
    return next((a for a in same_login.order_by("pk") if platform_host(a) == host), None)


def backfill_account(account: PbxAccount, entries: list[frames.HistoryEntry] | None = None,
                     now=None) -> BackfillReport:
    """Create the calls of ``entries`` (default: the PBX's whole history) that nothing recorded,
    and end the socket calls they show ended that are still live here."""
    if entries is None:
        entries = _fetch_history(account)
    now = now or timezone.now()
    report = BackfillReport(entries=len(entries))
    terminals = list(account.terminals.filter(active=True).order_by("id"))
    terminal_pbx_id = terminals[0].pbx_id if terminals else None
    matcher = SocketCallMatcher(account, [t.pbx_id for t in terminals], entries)
    already = set(
        Call.objects.filter(account=account, pbx_call_id__in=[frames.history_call_id(e.id) for e in entries])
        .values_list("pbx_call_id", flat=True)
    )
    ended = []  # entries of calls over at the PBX, settled or not (a live call they match ends now)
    for entry in sorted(entries, key=lambda e: e.started_at):
        if entry.started_at < now - HORIZON:
            report.too_old += 1
        elif entry.ended_at > now:
            report.not_settled += 1  # not over yet by our clock: nothing to end, nothing to create
        elif frames.history_call_id(entry.id) in already:
            report.already_backfilled += 1
        else:
            ended.append(entry)
    seen = matcher.assign(ended)
    due = []
    for entry in ended:
        call = seen.get(entry.id)
        if call is None:
            if entry.ended_at > now - SETTLE_AFTER:
                report.not_settled += 1
            else:
                due.append(entry)
        elif call.state != Call.State.ENDED:
            _end_live_call(call, entry, report)
        else:
            report.seen_by_socket += 1
    for entry in due:
        try:
            updates = frames.history_updates(entry, account.pk, terminal_pbx_id)
        except FrameRejected as exc:  # e.g. a NUL in a label: not storable, skip this entry only
            logger.warning("call-history entry %s skipped: %s", entry.id, exc, extra={"account_id": account.pk})
            continue
        with transaction.atomic():  # the call is only ever seen ended, never live
            for update in updates:
                applied = apply_call_update(update)
        report.created.append(applied.call.pk)
        logger.info("backfilled call %s from the call history", applied.call.pk,
                    extra={"account_id": account.pk, "call_history_id": entry.id})
    return report


def _end_live_call(call: Call, entry: frames.HistoryEntry, report: BackfillReport) -> None:
    with transaction.atomic():
        # Looked at again under the row lock: if its socket's own drop came meanwhile, that one has the last word.
        live = Call.objects.select_for_update().filter(pk=call.pk).exclude(state=Call.State.ENDED).first()
        if live is None:
            report.seen_by_socket += 1
            return
        try:
            update = frames.history_end_update(entry, live.account_id, live.pbx_call_id)
        except FrameRejected as exc:
            logger.warning("call-history entry %s cannot end call %s: %s", entry.id, call.pk, exc,
                           extra={"account_id": call.account_id, "call_id": call.pk})
            return
        applied = apply_call_update(update)
    if applied.changed:
        report.ended_live.append(call.pk)
        logger.info("ended call %s from the call history: its socket never said it ended", call.pk,
                    extra={"account_id": call.account_id, "call_id": call.pk, "call_history_id": entry.id})


def _fetch_history(account: PbxAccount) -> list[frames.HistoryEntry]:
    from telephony.providers.registry import cached_provider

    provider, lock = cached_provider(account)
    with lock:
        return provider.history()


def _digits(number: str) -> str:
    return "".join(ch for ch in number or "" if ch.isdigit())


class SocketCallMatcher:
    """Finds, for each entry, the nearest socket-recorded call that is the same call (see module doc)."""

    def __init__(self, account: PbxAccount, terminal_pbx_ids: list[str], entries: list[frames.HistoryEntry]):
        self.region = account.default_region or None
        self.candidates: list[Call] = []
        account_ids = socket_accounts(account)
        if not account_ids or not entries:
            return
        same_line = Q(terminal__pbx_id__in=terminal_pbx_ids)
        agents = owner_agent_ids(account.pk)
        if agents:
            same_line |= Q(agent_id__in=agents)
        extensions = {e.user_number for e in entries if e.user_number}
        if extensions:
            same_line |= Q(terminal__extension__in=extensions)
        earliest = min(e.started_at for e in entries) - MATCH_TOLERANCE
        latest = max(e.started_at for e in entries) + MATCH_TOLERANCE
        self.candidates = list(
            Call.objects.filter(account_id__in=account_ids, created_at__gte=earliest, created_at__lte=latest)
            .filter(same_line).select_related("terminal").order_by("created_at")
        )

    def assign(self, entries: list[frames.HistoryEntry]) -> dict[str, Call]:
        """entry id -> the socket call that is the same call; nearest pairs first, each call used once."""
        pairs = []
        for entry in entries:
            for call in self.candidates:
                gap = abs(call.created_at - entry.started_at)
                if gap <= MATCH_TOLERANCE and self._same_call(entry, call):
                    pairs.append((gap, entry.id, call))
        matched: dict[str, Call] = {}
        used: set[int] = set()
        for _, entry_id, call in sorted(pairs, key=lambda p: (p[0], p[1])):
            if entry_id not in matched and call.pk not in used:
                matched[entry_id] = call
                used.add(call.pk)
        return matched

    def _same_call(self, entry: frames.HistoryEntry, call: Call) -> bool:
        direction = Call.Direction.INBOUND if entry.incoming else Call.Direction.OUTBOUND
        if call.direction != direction:
            return False
        if call.state != Call.State.ENDED and call.created_at > entry.ended_at + LIVE_MATCH_SLACK:
            return False  # live, and begun after this entry's call was over: a later call, not this one
        if entry.user_number and call.terminal is not None and call.terminal.extension \
                and call.terminal.extension != entry.user_number:
            return False  # another line of the same agent
        return _same_number(entry.remote_number, call, self.region)


# How much later than the PBX ended a call its socket's drop may still come and be taken for a call the
# backfill stored: the backfill waits SETTLE_AFTER for such frames, this waits for frames later still.
LATE_DROP_WINDOW = timedelta(minutes=15)
# The call history counts whole seconds; a drop's talkingTime is in milliseconds.
TALK_TIME_SLACK_MS = 2000


def backfilled_call_for(update) -> Call | None:
    """The call the backfill stored for the call a socket's drop tells of, the socket's first frame of it.

    The reverse of ``SocketCallMatcher`` (``telephony.plugins.register_record_finder``): a drop that came
    so late (a socket down, then a PBX that delivers it after the reconnect; a worker far behind) that the
    backfill found no socket call for the history's entry and stored it as ``history:<id>``. The same
    platform's End User accounts are looked at for an unclaimed backfilled call on the same line, in the
    same direction, with the same remote number, answered or missed as the drop says (the same talk time,
    to the second), that ended at most ``LATE_DROP_WINDOW`` before the drop came; the one that ended last
    is taken. Unclaimed: no socket frame was taken for it yet (each backfilled call stands for one call).
    """
    if update.pbx_call_id.startswith(frames.HISTORY_CALL_PREFIX):
        return None
    account = PbxAccount.objects.filter(pk=update.account_id).only("kind", "base_url", "default_region").first()
    if account is None or account.kind not in SOCKET_KINDS:
        return None
    enduser_ids = enduser_accounts(account)
    if not enduser_ids:
        return None
    from telephony.models import CallEvent, Terminal  # noqa: PLC0415 - CallEvent only matters on this rare path

    line = Terminal.objects.filter(account_id=account.pk, pbx_id=update.terminal_pbx_id).first() \
        if update.terminal_pbx_id else None
    same_line = Q(terminal__pbx_id=update.terminal_pbx_id) if update.terminal_pbx_id else Q(pk__in=[])
    if line is not None and line.extension:
        same_line |= Q(terminal__extension=line.extension)
    if line is not None and line.agent_id:
        same_line |= Q(agent_id=line.agent_id)
    found = (Call.objects.filter(account_id__in=enduser_ids, pbx_call_id__startswith=frames.HISTORY_CALL_PREFIX,
                                 state=Call.State.ENDED, ended_at__gte=update.occurred_at - LATE_DROP_WINDOW,
                                 ended_at__lte=update.occurred_at + LIVE_MATCH_SLACK)
             .filter(same_line).order_by("-ended_at"))
    talked = update.talking_ms or 0
    region = account.default_region or None
    for call in found.select_related("terminal")[:50]:
        if update.direction is not None and call.direction != update.direction:
            continue
        if (talked > 0) != bool(call.talking_ms) or abs(talked - (call.talking_ms or 0)) > TALK_TIME_SLACK_MS:
            continue
        if not _same_number(update.remote_number_e164 or update.remote_number or "", call, region):
            continue
        # Locked, then looked at again: of two drops taken for it at once, the second waits and finds it claimed.
        locked = Call.objects.select_for_update().filter(pk=call.pk).first()
        if locked is None or CallEvent.objects.filter(call_id=call.pk).exclude(kind=frames.HISTORY_KIND).exists():
            continue
        return locked
    return None


def _same_number(number: str, call: Call, region) -> bool:
    """``number`` (as the history or a frame gives it) is ``call``'s other party: the same E.164 when both have
    one, else the same digits (short internal numbers), whichever way the call was found."""
    number_e164 = e164_or_empty(number or "", region)
    if number_e164 and call.remote_number_e164:
        return number_e164 == call.remote_number_e164
    theirs = _digits(call.remote_number_raw) or _digits(call.remote_number_e164)
    ours = _digits(number)
    return bool(ours) and ours == theirs
