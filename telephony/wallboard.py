"""The wallboard's figures for today: the floor's, each agent's, and the calls per hour.

"Today" is the calendar day in the configured ``TIME_ZONE``; a call belongs to the day it came in on
(``created_at``), whenever it was answered or ended. The figures are about customers calling in: inbound
calls, internal ones (a colleague's) left out. Answered: the call was answered (it may still be going on);
missed: it ended unanswered. Time to answer: ``answered_at - created_at``.

Two queries whatever the number of agents and calls (``figures``): one grouped by agent (the floor's
figures are their sums), one counting each hour. The snapshot carries them; the page then keeps them up to
date from the cards it receives (``static/ctihub/wallboard.js``), each call counted by its own id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.utils import timezone

from telephony.models import Call

HOUR = timedelta(hours=1)
# The chart's drawing, shared with wallboard.js (which draws it again as figures change): keep them alike.
CHART_SLOT = 30  # width of an hour
CHART_BAR = 12  # width of each of its two bars
CHART_PLOT = 150  # height of the tallest bar
CHART_HEIGHT = 180  # the plot and the hours' labels under it


def today_bounds(now: datetime | None = None) -> tuple[datetime, datetime]:
    """The start of today and of tomorrow in the configured time zone (23 or 25 hours apart on a DST change)."""
    zone = timezone.get_default_timezone()
    local = timezone.localtime(now or timezone.now(), zone)
    start = datetime.combine(local.date(), datetime.min.time(), tzinfo=zone)
    end = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    return start, end


def hour_starts(start: datetime, end: datetime) -> list[datetime]:
    """Every hour of the day, as instants: the chart's slots (hours counted from midnight, so a DST day has
    23 or 25 of them and none is counted twice)."""
    # In UTC: between two datetimes of one zone Python counts wall-clock time, 24 hours on any day.
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    count = round((end - start) / HOUR)
    return [start + n * HOUR for n in range(count)]


def _calls_of(start: datetime, end: datetime):
    return Call.objects.filter(direction=Call.Direction.INBOUND, is_internal=False,
                               created_at__gte=start, created_at__lt=end)


ANSWERED = Q(answered_at__isnull=False)
MISSED = Q(state=Call.State.ENDED, answered_at__isnull=True)


def figures(now: datetime | None = None) -> dict:
    """Today's figures as the wallboard's snapshot carries them (see the module's docstring)."""
    now = now or timezone.now()
    start, end = today_bounds(now)
    calls = _calls_of(start, end)
    wait = ExpressionWrapper(F("answered_at") - F("created_at"), output_field=DurationField())
    by_agent = (calls.order_by().values("agent_id")
                .annotate(answered=Count("pk", filter=ANSWERED), missed=Count("pk", filter=MISSED),
                          wait=Sum(wait, filter=ANSWERED)))
    agents, answered, missed, wait_total = {}, 0, 0, timedelta(0)
    for row in by_agent:
        answered += row["answered"]
        missed += row["missed"]
        wait_total += row["wait"] or timedelta(0)
        if row["agent_id"] is not None:
            agents[str(row["agent_id"])] = {"answered": row["answered"], "missed": row["missed"]}

    # Each hour a pair of counts in one query: the hours are instants (a DST day's too), and the same SQL
    # runs on SQLite (./scripts/run) as on PostgreSQL.
    slots = hour_starts(start, end)
    per_hour = {}
    for n, slot in enumerate(slots):
        within = Q(created_at__gte=slot, created_at__lt=slot + HOUR)
        per_hour[f"answered_{n}"] = Count("pk", filter=within & ANSWERED)
        per_hour[f"missed_{n}"] = Count("pk", filter=within & MISSED)
    counted = calls.order_by().aggregate(**per_hour)
    hours = [{"start": slot.isoformat(), "label": timezone.localtime(slot, start.tzinfo).strftime("%H"),
              "answered": counted[f"answered_{n}"], "missed": counted[f"missed_{n}"]}
             for n, slot in enumerate(slots)]
    wait_ms = round(wait_total.total_seconds() * 1000)
    return {
        "as_of": now.isoformat(),
        "day_start": start.isoformat(),
        "day_end": end.isoformat(),
        "answered": answered,
        "missed": missed,
        "wait_ms_total": wait_ms,  # the page adds each new answer's wait to it: the average stays exact
        "answer_rate": rate(answered, missed),
        "average_answer_ms": round(wait_ms / answered) if answered else None,
        "agents": agents,  # agent id (text, as JSON keys are) -> {"answered", "missed"}: those with a call today
        "hours": hours,
    }


def rate(answered: int, missed: int) -> int | None:
    """The answer rate in whole percent; None with no call yet."""
    total = answered + missed
    return round(100 * answered / total) if total else None


def chart(hours: list[dict]) -> dict:
    """The calls-per-hour chart's geometry for the server-drawn SVG (wallboard.js draws the same)."""
    tallest = max([1, *(h["answered"] for h in hours), *(h["missed"] for h in hours)])
    bars = []
    for n, hour in enumerate(hours):
        x = n * CHART_SLOT + (CHART_SLOT - 2 * CHART_BAR) // 2
        for kind, offset in (("answered", 0), ("missed", CHART_BAR)):
            height = round(hour[kind] * CHART_PLOT / tallest)
            bars.append({"kind": kind, "x": x + offset, "y": CHART_PLOT - height, "height": height,
                         "count": hour[kind], "label": hour["label"]})
    labels = [{"x": n * CHART_SLOT + CHART_SLOT // 2, "text": hour["label"]}
              for n, hour in enumerate(hours) if n % 2 == 0]
    return {"width": len(hours) * CHART_SLOT, "height": CHART_HEIGHT, "plot": CHART_PLOT, "bar": CHART_BAR,
            "label_y": CHART_PLOT + 18, "tallest": tallest, "bars": bars, "labels": labels}
