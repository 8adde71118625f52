"""Call history: the calls a viewer may see, filtered, each as a row (the page and its CSV export), and the
missed calls nobody has returned yet (the console's count).

A call's result is derived from what the domain wrote (``answered_at``, ``end_cause``, ``state``), the same
way for the filter (a ``Q``) and for the row (``result_of``), so a row never shows a result its filter
would not find.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import Exists, F, OuterRef, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from ctihub.lib.phones import e164_or_empty, for_people
from telephony import updates as u
from telephony.models import Call
from telephony.plugins import card_extras

PAGE_SIZE = 50
EXPORT_CHUNK = 1000
# An export is for a person's spreadsheet, not a backup: narrow the dates for more.
EXPORT_MAX_ROWS = 50_000
# Unreturned missed calls: looked for since the start of the day (the wallboard's "missed today" too),
# and at most this many numbers sent to a console.
UNRETURNED_MAX = 100

ANSWERED, MISSED, BUSY, FAILED, LIVE = "answered", "missed", "busy", "failed", "live"
RESULTS = {
    ANSWERED: gettext_lazy("Answered"),
    MISSED: gettext_lazy("Missed"),
    BUSY: gettext_lazy("Busy"),
    FAILED: gettext_lazy("Failed"),
}
DIRECTIONS = {u.INBOUND: gettext_lazy("Incoming"), u.OUTBOUND: gettext_lazy("Outgoing")}
FAILED_CAUSES = (u.END_FAILED, u.END_UNAVAILABLE)
# The caller was answered, by another terminal: nothing to call back.
ANSWERED_ELSEWHERE = Q(end_cause=u.END_ANSWERED_ELSEWHERE)
_UNANSWERED_END = Q(state=Call.State.ENDED, answered_at__isnull=True) & ~ANSWERED_ELSEWHERE
RESULT_FILTERS = {
    ANSWERED: Q(answered_at__isnull=False) | ANSWERED_ELSEWHERE,
    BUSY: _UNANSWERED_END & Q(end_cause=u.END_BUSY),
    FAILED: _UNANSWERED_END & Q(end_cause__in=FAILED_CAUSES),
    MISSED: _UNANSWERED_END & ~Q(end_cause__in=(u.END_BUSY, *FAILED_CAUSES)),
}
# What a row reads of a call, its agent's user and what the card enrichers read (crm_sync's: the
# direction, account, agent and number): a deferred field read per row would be a query per row.
ROW_FIELDS = (
    "id", "account", "agent", "direction", "is_internal", "state", "remote_number_e164", "remote_number_raw",
    "remote_label", "external_phone", "site_code", "created_at", "answered_at", "ended_at", "talking_ms",
    "end_cause", "agent__user__username", "agent__user__first_name", "agent__user__last_name",
)
CSV_INJECTION_STARTS = ("=", "+", "-", "@", "\t", "\r")


def result_of(call: Call) -> str:
    """The row's result: one of ``RESULTS``, or ``LIVE`` for a call not ended and not answered."""
    if call.answered_at is not None or call.end_cause == u.END_ANSWERED_ELSEWHERE:
        return ANSWERED
    if call.state != Call.State.ENDED:
        return LIVE
    if call.end_cause == u.END_BUSY:
        return BUSY
    if call.end_cause in FAILED_CAUSES:
        return FAILED
    return MISSED


def result_label(call: Call, result: str) -> str:
    if result == LIVE:
        return _("In progress")
    if result == ANSWERED and call.answered_at is None:
        return _("Answered elsewhere")
    if result == MISSED and call.direction == u.OUTBOUND:
        return _("Not answered")
    return str(RESULTS[result])


@dataclass(frozen=True)
class Filters:
    date_from: date | None = None
    date_to: date | None = None
    agent_id: int | None = None  # supervisors only: an agent sees their own calls whatever this says
    direction: str = ""
    result: str = ""
    number: str = ""


def day_start(day: date) -> datetime:
    """Midnight of ``day`` in the current time zone (the user's), as an aware time."""
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


def number_filter(text: str) -> Q | None:
    """Calls with this number: its E.164 form (read with the default region, as the console dials), or
    these digits anywhere in it (3 or more), a national number's leading 0 dropped too. None: no digits."""
    digits = re.sub(r"\D", "", text or "")
    if not digits:
        return None
    found = Q(pk__in=[])
    e164 = e164_or_empty(text)
    if e164:
        found |= Q(remote_number_e164=e164)
    for part in {digits, digits.lstrip("0")}:
        if len(part) >= 3:
            found |= Q(remote_number_e164__contains=part) | Q(remote_number_raw__contains=part)
    return found


def calls_for(viewer, filters: Filters) -> QuerySet:
    """The calls the viewer may see that match ``filters``, newest first."""
    calls = Call.objects.select_related("agent__user").only(*ROW_FIELDS)
    if viewer.is_supervisor:
        if filters.agent_id is not None:
            calls = calls.filter(agent_id=filters.agent_id)
    else:
        calls = calls.filter(agent=viewer.agent)
    if filters.date_from:
        calls = calls.filter(created_at__gte=day_start(filters.date_from))
    if filters.date_to:
        calls = calls.filter(created_at__lt=day_start(filters.date_to + timedelta(days=1)))
    if filters.direction in DIRECTIONS:
        calls = calls.filter(direction=filters.direction)
    if filters.result in RESULT_FILTERS:
        calls = calls.filter(RESULT_FILTERS[filters.result])
    if filters.number:
        by_number = number_filter(filters.number)
        if by_number is not None:
            calls = calls.filter(by_number)
    return calls.order_by("-created_at", "-id")


@dataclass(frozen=True)
class Row:
    call: Call
    number: str  # what is dialled to call back
    number_display: str
    agent_name: str
    direction_label: str
    duration: str
    result: str
    result_label: str
    customer: str
    customer_url: str


def rows_of(calls: list[Call]) -> list[Row]:
    """The rows of these calls, the card enrichers (retailCRM's customer) asked once for all of them."""
    extras = card_extras(calls) if calls else {}
    return [_row(call, extras.get(call.pk) or {}) for call in calls]


def _row(call: Call, extras: dict) -> Row:
    number = call.remote_number_e164 or call.remote_number_raw
    customer, url = customer_of(extras.get("crm"))
    result = result_of(call)
    agent = call.agent
    return Row(
        call=call,
        number=number,
        number_display=for_people(call.remote_number_e164) if call.remote_number_e164 else number,
        agent_name=(agent.user.get_full_name() or agent.user.username) if agent else "",
        direction_label=str(DIRECTIONS.get(call.direction, call.direction)),
        duration=duration_text(call.talking_ms) if call.answered_at else "",
        result=result,
        result_label=result_label(call, result),
        customer=customer,
        customer_url=url,
    )


def customer_of(crm) -> tuple[str, str]:
    """(the customer's name, the link to them in retailCRM) from a card's ``crm`` (crm_sync's enricher)."""
    if not isinstance(crm, dict):
        return "", ""
    customer = crm.get("customer") if isinstance(crm.get("customer"), dict) else None
    name = ""
    if customer:
        name = " ".join(str(part) for part in (customer.get("firstName"), customer.get("lastName")) if part)
        if not name and customer.get("id") is not None:
            name = _("Customer #%(id)s") % {"id": customer["id"]}
    links = crm.get("links") if isinstance(crm.get("links"), dict) else {}
    url = links.get("customerLink") or ""
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        url = ""
    return name, url


def duration_text(ms: int | None) -> str:
    seconds = (ms or 0) // 1000
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


# --- CSV export ---------------------------------------------------------------------------------------


def csv_safe(value) -> str:
    """A cell a spreadsheet shows as text: one starting with = + - @ (or a tab, a return) would be read
    as a formula, so it gets a leading quote (OWASP's CSV injection advice)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(CSV_INJECTION_STARTS) else text


class _Echo:
    def write(self, value):
        return value


def csv_header() -> str:
    # A BOM first: spreadsheets then read the file as UTF-8 (names in Cyrillic, accents).
    return "\ufeff" + csv.writer(_Echo()).writerow([
        _("Time"), _("Agent"), _("Direction"), _("Number"), _("Duration"), _("Result"), _("Customer"),
        _("Customer in retailCRM")])


def csv_chunk(calls: QuerySet, after: Call | None, room: int) -> tuple[str, Call | None, int]:
    """The next lines of the export: up to ``EXPORT_CHUNK`` (and ``room``) calls of ``calls`` after ``after``
    (the last call of the previous chunk; None: from the first), read by (created_at, id), newest first, their
    customers asked of the enrichers at once. Returns the text, the chunk's last call (None: no more) and
    its number of calls.
    Each chunk its own queries, so consecutive chunks may run on different threads."""
    if after is not None:
        calls = calls.filter(Q(created_at__lt=after.created_at) | Q(created_at=after.created_at, id__lt=after.pk))
    chunk = list(calls[:min(EXPORT_CHUNK, room)]) if room > 0 else []
    if not chunk:
        return "", None, 0
    writer, tz = csv.writer(_Echo()), timezone.get_current_timezone()
    lines = [writer.writerow([csv_safe(cell) for cell in (
        timezone.localtime(row.call.created_at, tz).strftime("%Y-%m-%d %H:%M:%S"), row.agent_name,
        row.direction_label, row.number, row.duration, row.result_label, row.customer, row.customer_url,
    )]) for row in rows_of(chunk)]
    return "".join(lines), chunk[-1], len(chunk)


def csv_lines(calls: QuerySet) -> Iterator[str]:
    """The export, a chunk at a time, at most ``EXPORT_MAX_ROWS`` rows (``telephony.views`` runs the chunks
    on the web pool under daphne)."""
    yield csv_header()
    sent, last = 0, None
    while True:
        text, last, count = csv_chunk(calls, last, EXPORT_MAX_ROWS - sent)
        if last is None:
            return
        sent += count
        yield text


# --- unreturned missed calls --------------------------------------------------------------------------


def unreturned_missed(viewer, since: datetime | None = None) -> list[str]:
    """The numbers of the viewer's missed incoming calls since ``since`` (the start of today) that nobody
    returned: no call with that number answered since the missed one began to ring (a colleague's leg of the
    same call, answered while this one rang, counts) and no outgoing call to it since (by anyone). Each
    number once, newest missed first, at most ``UNRETURNED_MAX``. One query."""
    since = _start_of_today() if since is None else since
    missed = _unreturned_missed_calls(since)
    if not viewer.is_supervisor:
        missed = missed.filter(agent=viewer.agent)
    rows = missed.order_by("-created_at").values_list("remote_number_e164", flat=True)
    return _newest_numbers(rows[: UNRETURNED_MAX * 5])


def unreturned_missed_by_agent(agent_ids: list[int], since: datetime | None = None) -> dict[int, list[str]]:
    """``unreturned_missed`` of many agents (not supervisors) in one query: {agent id: its numbers}, each as
    the agent's own would be. A connect storm asked once per console, 15% of daphne's CPU (issue 16)."""
    since = _start_of_today() if since is None else since
    # Each agent's newest UNRETURNED_MAX * 5 rows, as its own query's slice reads.
    rank = Window(RowNumber(), partition_by=[F("agent_id")], order_by=[F("created_at").desc(), F("pk").desc()])
    rows = _unreturned_missed_calls(since).filter(agent__in=agent_ids).annotate(_rank=rank) \
        .filter(_rank__lte=UNRETURNED_MAX * 5).order_by("agent_id", "-created_at", "-pk") \
        .values_list("agent_id", "remote_number_e164")
    numbers: dict[int, list[str]] = {}
    for agent_id, number in rows:
        numbers.setdefault(agent_id, []).append(number)
    return {agent_id: _newest_numbers(numbers.get(agent_id, ())) for agent_id in agent_ids}


def _start_of_today() -> datetime:
    return timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)


def _unreturned_missed_calls(since: datetime) -> QuerySet:
    missed = Call.objects.filter(RESULT_FILTERS[MISSED], direction=u.INBOUND, created_at__gte=since) \
        .exclude(remote_number_e164="")
    # ``updated_at >= since`` adds nothing (a call answered or made after ``since`` was updated after it) but
    # lets the planner read only the day's calls by their index (call_updated), not every call ever.
    returned = Call.objects.filter(
        Q(answered_at__gte=OuterRef("created_at")) | Q(direction=u.OUTBOUND, created_at__gt=OuterRef("created_at")),
        remote_number_e164=OuterRef("remote_number_e164"), updated_at__gte=since,
    )
    return missed.filter(~Exists(returned))


def _newest_numbers(rows) -> list[str]:
    latest: dict[str, None] = {}
    for number in rows:
        latest.setdefault(number, None)
        if len(latest) >= UNRETURNED_MAX:
            break
    return list(latest)
