"""Today's figures on the wallboard (``telephony.wallboard``): what counts, the day's edges, the queries."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from telephony import console, wallboard
from telephony.models import Call
from tests.factories import make_account, make_agent, make_call

pytestmark = pytest.mark.django_db

PARIS = ZoneInfo("Europe/Paris")
ENDED, TALKING, RINGING = Call.State.ENDED, Call.State.TALKING, Call.State.RINGING


def answered(account, agent, at, wait_s, **fields):
    return make_call(account, agent=agent, created_at=at, answered_at=at + timedelta(seconds=wait_s),
                     **{"state": ENDED, **fields})


def missed(account, agent, at, **fields):
    return make_call(account, agent=agent, created_at=at, state=ENDED, **fields)


@override_settings(TIME_ZONE="Europe/Paris")
def test_it_counts_todays_customer_calls_answered_and_missed_per_agent_and_for_the_floor():
    account = make_account()
    alice, bob, carol = make_agent("alice"), make_agent("bob"), make_agent("carol")
    now = datetime(2026, 6, 10, 15, 30, tzinfo=PARIS)
    morning = datetime(2026, 6, 10, 9, 5, tzinfo=PARIS)
    answered(account, alice, morning, 10)
    missed(account, alice, morning + timedelta(minutes=1))
    answered(account, bob, morning + timedelta(hours=5), 20, state=TALKING)  # still talking: answered
    missed(account, None, morning + timedelta(hours=5, minutes=2))  # nobody's: the floor's only
    make_call(account, agent=carol, created_at=now - timedelta(seconds=30), state=RINGING)  # neither yet
    # Not the customers' of today: an outbound call, a colleague's, yesterday's.
    answered(account, carol, morning, 3, direction=Call.Direction.OUTBOUND)
    missed(account, carol, morning, is_internal=True)
    missed(account, carol, morning - timedelta(days=1))

    today = wallboard.figures(now)

    assert (today["answered"], today["missed"]) == (2, 2)
    assert today["wait_ms_total"] == 30_000 and today["average_answer_ms"] == 15_000
    assert today["answer_rate"] == 50
    assert today["agents"] == {str(alice.pk): {"answered": 1, "missed": 1}, str(bob.pk): {"answered": 1, "missed": 0},
                               str(carol.pk): {"answered": 0, "missed": 0}}
    by_label = {h["label"]: (h["answered"], h["missed"]) for h in today["hours"]}
    assert by_label["09"] == (1, 1) and by_label["14"] == (1, 1) and by_label["15"] == (0, 0)
    assert sum(h["answered"] for h in today["hours"]) == 2 and sum(h["missed"] for h in today["hours"]) == 2


@override_settings(TIME_ZONE="Europe/Paris")
def test_it_starts_the_day_at_midnight_in_the_configured_time_zone():
    account = make_account()
    agent = make_agent()
    midnight = datetime(2026, 6, 10, 0, 0, tzinfo=PARIS)  # 22:00 UTC the day before
    missed(account, agent, midnight - timedelta(microseconds=1))  # yesterday, by a microsecond
    first = missed(account, agent, midnight)
    last = missed(account, agent, midnight + timedelta(days=1) - timedelta(microseconds=1))

    today = wallboard.figures(midnight + timedelta(hours=12))

    assert today["day_start"] == midnight.isoformat()
    assert today["day_end"] == (midnight + timedelta(days=1)).isoformat()
    assert today["missed"] == 2
    assert [h["label"] for h in today["hours"]] == [f"{n:02d}" for n in range(24)]
    assert (today["hours"][0]["missed"], today["hours"][23]["missed"]) == (1, 1), (first.created_at, last.created_at)
    # Just after midnight the day is a new one: yesterday's calls are gone from it.
    assert wallboard.figures(midnight + timedelta(days=1, seconds=1))["missed"] == 0
    # And at 23:59 UTC (01:59 in Paris) it is already Paris's next day.
    assert wallboard.today_bounds(datetime(2026, 6, 10, 23, 59, tzinfo=ZoneInfo("UTC")))[0] == \
        midnight + timedelta(days=1)


@override_settings(TIME_ZONE="Europe/Paris")
def test_it_gives_a_day_of_a_clock_change_its_real_hours_none_counted_twice():
    account = make_account()
    agent = make_agent()
    # 25 October 2026: at 03:00 summer time Paris goes back to 02:00; the hour from 02:00 comes twice.
    summer = datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=0)
    winter = datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=1)
    missed(account, agent, summer)
    answered(account, agent, winter, 5)

    today = wallboard.figures(datetime(2026, 10, 25, 12, tzinfo=PARIS))

    labels = [h["label"] for h in today["hours"]]
    assert len(labels) == 25 and labels[:5] == ["00", "01", "02", "02", "03"]
    assert (today["hours"][2]["missed"], today["hours"][3]["answered"]) == (1, 1)
    spring = wallboard.figures(datetime(2026, 3, 29, 12, tzinfo=PARIS))["hours"]
    assert len(spring) == 23 and [h["label"] for h in spring][:3] == ["00", "01", "03"]


def test_it_reads_the_figures_in_two_queries_whatever_the_number_of_agents():
    account = make_account()
    now = timezone.now()

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            wallboard.figures(now)
        return len(captured)

    agent = make_agent()
    answered(account, agent, now - timedelta(seconds=60), 4)
    few = queries()
    for _ in range(6):
        other = make_agent()
        answered(account, other, now - timedelta(seconds=50), 4)
        missed(account, other, now - timedelta(seconds=40))
    assert few == queries() == 2


def test_it_has_no_rate_nor_average_before_the_first_call():
    today = wallboard.figures()
    assert (today["answered"], today["missed"], today["answer_rate"], today["average_answer_ms"]) == (0, 0, None, None)
    assert wallboard.rate(2, 1) == 67


def test_it_draws_the_tallest_bar_full_height_and_an_empty_hour_flat():
    hours = [{"label": f"{n:02d}", "answered": 0, "missed": 0} for n in range(24)]
    hours[9] = {"label": "09", "answered": 4, "missed": 2}
    drawn = wallboard.chart(hours)
    bars = {(b["label"], b["kind"]): b for b in drawn["bars"]}
    assert len(drawn["bars"]) == 48 and drawn["width"] == 24 * wallboard.CHART_SLOT
    assert bars["09", "answered"]["height"] == wallboard.CHART_PLOT and bars["09", "answered"]["y"] == 0
    assert bars["09", "missed"]["height"] == wallboard.CHART_PLOT // 2
    assert bars["10", "answered"]["height"] == 0 and bars["10", "answered"]["y"] == wallboard.CHART_PLOT
    assert bars["09", "missed"]["x"] == bars["09", "answered"]["x"] + wallboard.CHART_BAR


def test_it_sends_supervisors_todays_figures_in_the_snapshot_and_agents_none():
    account = make_account()
    agent = make_agent("jdoe")
    now = timezone.now()
    answered(account, agent, now - timedelta(seconds=90), 12)
    boss = get_user_model().objects.create_superuser("boss", password="x-123-456-789")

    message = console.snapshot(console.Viewer(boss, None))

    figures = json.loads(json.dumps(message))["wallboard"]  # as the page receives it
    assert {"as_of", "day_start", "day_end", "answered", "missed", "wait_ms_total", "answer_rate",
            "average_answer_ms", "agents", "hours"} <= set(figures)
    assert figures["answered"] == 1 and figures["agents"] == {str(agent.pk): {"answered": 1, "missed": 0}}
    assert set(figures["hours"][0]) == {"start", "label", "answered", "missed"}
    assert [a["id"] for a in message["agents"]] == [agent.pk]
    assert "wallboard" not in console.snapshot(console.Viewer(agent.user, agent))


def test_it_draws_todays_figures_and_chart_on_the_page(client):
    account = make_account()
    boss = make_agent("boss", is_supervisor=True)
    now = timezone.now()
    answered(account, boss, now, 65)
    missed(account, boss, now)
    client.force_login(boss.user)

    page = client.get("/wallboard/").content.decode()

    assert '<dd id="fig-answered">1</dd>' in page and '<dd id="fig-missed">1</dd>' in page
    assert '<dd id="fig-rate">50 %</dd>' in page and '<dd id="fig-wait">1:05</dd>' in page
    hours = len(wallboard.hour_starts(*wallboard.today_bounds(now)))
    assert page.count('<rect class="bar bar-') == 2 * hours


def test_it_reads_todays_calls_through_an_index_not_the_whole_history():
    """Without an index on created_at each snapshot of a supervisor would read every call ever taken."""
    start, end = wallboard.today_bounds()
    query = wallboard._calls_of(start, end).order_by().values("agent_id").annotate(n=Count("pk"))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = query.explain()
    assert "call_created" in plan, plan
