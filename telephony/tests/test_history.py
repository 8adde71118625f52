"""The call history page, its CSV export, the click-to-call it uses, and the count of unreturned missed calls."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from telephony import console, control, history, plugins
from telephony import updates as u
from telephony.models import Call
from tests.factories import make_account, make_agent, make_call

pytestmark = pytest.mark.django_db

PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def world():
    account = make_account()
    alice, bob = make_agent("alice"), make_agent("bob")
    alice.user.first_name, alice.user.last_name = "Alice", "Martin"
    alice.user.save()
    boss = make_agent("boss", is_supervisor=True)
    return {"account": account, "alice": alice, "bob": bob, "boss": boss}


def ended(account, agent, number="+33612345678", direction=Call.Direction.INBOUND, answered=False, cause="",
          at=None, **fields) -> Call:
    at = at or timezone.now() - timedelta(minutes=5)
    fields.setdefault("remote_number_raw", number)
    return make_call(account, agent=agent, direction=direction, state=Call.State.ENDED, remote_number_e164=number,
                     created_at=at, answered_at=at if answered else None,
                     ended_at=at + timedelta(minutes=1), end_cause=cause or (u.END_HANGUP if answered else u.END_NO_ANSWER),
                     talking_ms=61000 if answered else None, **fields)


def shown_calls(response) -> list[int]:
    return [row.call.pk for row in response.context["rows"]]


def csv_rows(response) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode("utf-8")
    assert body.startswith("\ufeff")
    return list(csv.reader(io.StringIO(body[1:])))


def test_it_shows_an_agent_their_own_calls_and_a_supervisor_everyones(client, world):
    mine = ended(world["account"], world["alice"])
    theirs = ended(world["account"], world["bob"], number="+33687654321")
    client.force_login(world["alice"].user)
    response = client.get("/history/?agent=%d" % world["bob"].pk)  # an agent cannot ask for another's calls
    assert response.status_code == 200 and shown_calls(response) == [mine.pk]
    assert b"+33 6 87 65 43 21" not in response.content
    assert csv_rows(client.get("/history/calls.csv?agent=%d" % world["bob"].pk))[1:][0][3] == "'+33612345678"
    assert len(csv_rows(client.get("/history/calls.csv"))) == 2  # the header and alice's call

    client.force_login(world["boss"].user)
    assert shown_calls(client.get("/history/")) == [theirs.pk, mine.pk]
    assert shown_calls(client.get("/history/?agent=%d" % world["bob"].pk)) == [theirs.pk]


def test_it_sends_anonymous_visitors_to_log_in_and_explains_to_a_user_without_a_role(client, django_user_model):
    for url in ("/history/", "/history/calls.csv"):
        response = client.get(url)
        assert response.status_code == 302 and "login" in response["Location"], url
    assert client.post("/console/dial/", {"number": "102"}, content_type="application/json").status_code == 302
    client.force_login(django_user_model.objects.create_user("nobody", password="x-123-456-789"))
    for url in ("/history/", "/history/calls.csv"):
        assert client.get(url).status_code == 403, url


def test_it_filters_by_day_in_the_users_time_zone(client, world, settings):
    settings.TIME_ZONE = "Europe/Paris"
    # 23:30 in Paris on 1 March is 22:30 UTC: it belongs to 1 March, not to 2 March.
    late = ended(world["account"], world["alice"], at=datetime(2026, 3, 1, 23, 30, tzinfo=PARIS))
    next_day = ended(world["account"], world["alice"], at=datetime(2026, 3, 2, 0, 10, tzinfo=PARIS))
    before = ended(world["account"], world["alice"], at=datetime(2026, 2, 28, 12, 0, tzinfo=PARIS))
    client.force_login(world["alice"].user)
    assert shown_calls(client.get("/history/?date_from=2026-03-01&date_to=2026-03-01")) == [late.pk]
    assert shown_calls(client.get("/history/?date_from=2026-03-02")) == [next_day.pk]
    assert shown_calls(client.get("/history/?date_to=2026-02-28")) == [before.pk]
    # A date that is not one is shown as an error and left out.
    response = client.get("/history/?date_from=yesterday")
    assert response.context["form"].errors["date_from"] and len(shown_calls(response)) == 3


def test_it_filters_by_direction_and_result(client, world):
    account, alice = world["account"], world["alice"]
    answered = ended(account, alice, answered=True)
    missed = ended(account, alice, cause=u.END_NO_ANSWER)
    busy = ended(account, alice, direction=Call.Direction.OUTBOUND, cause=u.END_BUSY)
    failed = ended(account, alice, direction=Call.Direction.OUTBOUND, cause=u.END_UNAVAILABLE)
    elsewhere = ended(account, alice, cause=u.END_ANSWERED_ELSEWHERE)
    ringing = make_call(account, agent=alice, state=Call.State.RINGING, remote_number_e164="+33600000000")
    client.force_login(alice.user)

    def ids(query):
        return set(shown_calls(client.get(f"/history/?{query}")))

    assert ids("direction=out") == {busy.pk, failed.pk}
    assert ids("direction=in") == {answered.pk, missed.pk, elsewhere.pk, ringing.pk}
    assert ids("result=answered") == {answered.pk, elsewhere.pk}
    assert ids("result=missed") == {missed.pk}
    assert ids("result=busy") == {busy.pk}
    assert ids("result=failed") == {failed.pk}
    assert ids("result=missed&direction=out") == set()
    rows = {row.call.pk: row for row in client.get("/history/").context["rows"]}
    assert {pk: row.result for pk, row in rows.items()} == {
        answered.pk: "answered", missed.pk: "missed", busy.pk: "busy", failed.pk: "failed",
        elsewhere.pk: "answered", ringing.pk: "live"}
    assert rows[answered.pk].duration == "1:01" and rows[missed.pk].duration == ""
    assert rows[elsewhere.pk].result_label == "Answered elsewhere"


def test_it_finds_a_number_by_its_e164_form_or_some_of_its_digits(client, world):
    account, alice = world["account"], world["alice"]
    paris = ended(account, alice, number="+33612345678")
    other = ended(account, alice, number="+33798765432")
    extension = ended(account, alice, number="", remote_number_raw="1234")
    client.force_login(alice.user)

    def ids(number):
        return set(shown_calls(client.get("/history/", {"number": number})))

    assert ids("06 12 34 56 78") == {paris.pk}  # national: read as E.164 with the default region
    assert ids("+33 6 12 34 56 78") == {paris.pk}
    assert ids("5678") == {paris.pk}  # partial digits
    assert ids("0798") == {other.pk}  # partial, its national 0 dropped
    assert ids("1234") == {paris.pk, extension.pk}
    assert ids("999999") == set()
    response = client.get("/history/", {"number": "Smith"})
    assert response.context["form"].errors["number"] and len(shown_calls(response)) == 3


def test_it_pages_by_fifty_and_keeps_the_filters_in_the_links(client, world):
    account, alice = world["account"], world["alice"]
    start = timezone.now() - timedelta(days=1)
    calls = [ended(account, alice, at=start + timedelta(minutes=i)) for i in range(history.PAGE_SIZE + 3)]
    client.force_login(alice.user)
    first = client.get("/history/?result=missed")
    assert shown_calls(first) == [c.pk for c in reversed(calls)][:history.PAGE_SIZE]
    assert b'href="?result=missed&amp;page=2"' in first.content
    second = client.get("/history/?result=missed&page=2")
    assert shown_calls(second) == [c.pk for c in reversed(calls[:3])]
    assert shown_calls(client.get("/history/?result=missed&page=99")) == shown_calls(second)  # the last page


def test_it_reads_a_page_in_as_many_queries_whatever_its_number_of_rows(client, world, django_assert_max_num_queries):
    account, boss = world["account"], world["boss"]
    ended(account, world["alice"])
    client.force_login(boss.user)
    with CaptureQueriesContext(connection) as one_row:
        assert client.get("/history/").status_code == 200
    for i in range(history.PAGE_SIZE):
        ended(account, world["alice"] if i % 2 else world["bob"], number=f"+336000000{i:02d}")
    with django_assert_max_num_queries(len(one_row.captured_queries)):
        response = client.get("/history/")
    assert len(shown_calls(response)) == history.PAGE_SIZE
    assert b"Alice Martin" in response.content and b"bob" in response.content
    with django_assert_max_num_queries(12):
        assert len(csv_rows(client.get("/history/calls.csv"))) == history.PAGE_SIZE + 2


def test_it_shows_the_customer_and_links_to_them_in_retailcrm(client, world, monkeypatch):
    account, alice = world["account"], world["alice"]
    known = ended(account, alice, number="+33612345678")
    unnamed = ended(account, alice, number="+33687654321")
    unknown = ended(account, alice, number="+33611111111")
    crm = {
        known.pk: {"customer": {"id": 7, "firstName": "Marie", "lastName": "Curie"},
                   "links": {"customerLink": "https://shop.retailcrm.ru/customers/7"}},
        unnamed.pk: {"customer": {"id": 8}, "links": {"customerLink": "javascript:alert(1)"}},
    }
    monkeypatch.setattr(plugins, "_card_enrichers", [lambda calls: {c.pk: {"crm": crm.get(c.pk)} for c in calls}])
    client.force_login(alice.user)
    response = client.get("/history/")
    rows = {row.call.pk: row for row in response.context["rows"]}
    assert (rows[known.pk].customer, rows[known.pk].customer_url) == (
        "Marie Curie", "https://shop.retailcrm.ru/customers/7")
    assert (rows[unnamed.pk].customer, rows[unnamed.pk].customer_url) == ("Customer #8", "")
    assert (rows[unknown.pk].customer, rows[unknown.pk].customer_url) == ("", "")
    assert b'href="https://shop.retailcrm.ru/customers/7"' in response.content
    assert b"javascript:" not in response.content
    by_number = {row[3]: row for row in csv_rows(client.get("/history/calls.csv"))[1:]}
    assert by_number["'+33612345678"][6:] == ["Marie Curie", "https://shop.retailcrm.ru/customers/7"]


def test_it_exports_the_filtered_calls_as_csv_that_no_spreadsheet_runs(client, world, settings):
    settings.TIME_ZONE = "Europe/Paris"
    account, alice = world["account"], world["alice"]
    alice.user.first_name, alice.user.last_name = "=HYPERLINK(\"http://evil\")", "@SUM(1)"
    alice.user.save()
    ended(account, alice, answered=True, at=datetime(2026, 3, 1, 9, 5, 7, tzinfo=PARIS))
    ended(account, alice, direction=Call.Direction.OUTBOUND, cause=u.END_BUSY)
    client.force_login(alice.user)
    response = client.get("/history/calls.csv?result=answered")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="calls-')
    header, *rows = csv_rows(response)
    assert header == ["Time", "Agent", "Direction", "Number", "Duration", "Result", "Customer",
                      "Customer in retailCRM"]
    assert rows == [["2026-03-01 09:05:07", "'=HYPERLINK(\"http://evil\") @SUM(1)", "Incoming", "'+33612345678",
                     "1:01", "Answered", "", ""]]
    for value, safe in (("=1+1", "'=1+1"), ("+33", "'+33"), ("-2", "'-2"), ("@A1", "'@A1"), ("\tx", "'\tx"),
                        ("Smith", "Smith"), ("", ""), (None, "")):
        assert history.csv_safe(value) == safe


def test_it_reads_the_export_in_chunks_and_stops_at_its_bound(world, monkeypatch):
    account, alice = world["account"], world["alice"]
    start = timezone.now() - timedelta(days=1)
    same_time = start + timedelta(hours=1)
    calls = [ended(account, alice, at=start + timedelta(minutes=i)) for i in range(5)]
    calls += [ended(account, alice, at=same_time) for _ in range(3)]  # ties: read by id, none twice or lost
    monkeypatch.setattr(history, "EXPORT_CHUNK", 2)
    viewer = console.Viewer(alice.user, alice)

    def exported():
        chunks = list(history.csv_lines(history.calls_for(viewer, history.Filters())))
        return chunks, list(csv.reader(io.StringIO("".join(chunks)[1:])))[1:]

    chunks, rows = exported()
    assert len(chunks) == 1 + 4  # the header, then 8 calls 2 by 2
    times = [row[0] for row in rows]
    assert len(rows) == len(calls) and times == sorted(times, reverse=True)
    assert len(set(map(tuple, rows))) < len(rows)  # the ties are there, each once: 3 same rows for 3 calls
    monkeypatch.setattr(history, "EXPORT_MAX_ROWS", 3)
    assert len(exported()[1]) == 3


def test_it_calls_back_through_the_consoles_dial(client, world, monkeypatch):
    placed = []
    monkeypatch.setattr(control, "place_call", lambda agent, number: placed.append((agent.pk, number)) or {})
    client.force_login(world["alice"].user)
    response = client.post("/console/dial/", {"number": "+33612345678"}, content_type="application/json")
    assert response.status_code == 200 and response.json()["ok"]
    assert placed == [(world["alice"].pk, "+33612345678")]
    refused = client.post("/console/dial/", {"number": "=cmd|calc"}, content_type="application/json")
    assert refused.status_code == 400 and not refused.json()["ok"]
    assert client.post("/console/dial/", {"nope": 1}, content_type="application/json").status_code == 400
    assert placed == [(world["alice"].pk, "+33612345678")]


def test_it_refuses_a_call_back_without_the_csrf_token(world, monkeypatch):
    from django.test import Client

    placed = []
    monkeypatch.setattr(control, "place_call", lambda agent, number: placed.append(number) or {})
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(world["alice"].user)
    assert strict.post("/console/dial/", {"number": "102"}, content_type="application/json").status_code == 403
    assert placed == []


def test_it_counts_each_unreturned_missed_caller_of_today_once(world):
    account, alice, bob = world["account"], world["alice"], world["bob"]
    now = timezone.now()
    today = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    since = today if now - today > timedelta(minutes=40) else now - timedelta(hours=1)  # the test may run at 00:10

    def at(minutes_ago):
        return now - timedelta(minutes=minutes_ago)

    ended(account, alice, number="+33600000001", at=at(30))  # missed twice: one caller to call back
    ended(account, alice, number="+33600000001", at=at(20))
    ended(account, alice, number="+33600000002", at=at(30))  # called back by alice (unanswered: an attempt)
    ended(account, alice, number="+33600000002", direction=Call.Direction.OUTBOUND, at=at(25))
    ended(account, alice, number="+33600000003", at=at(30))  # called again and answered by bob
    ended(account, bob, number="+33600000003", answered=True, at=at(10))
    ended(account, alice, number="+33600000004", answered=True, at=at(35))  # answered before, missed after
    ended(account, alice, number="+33600000004", at=at(30))
    ended(account, alice, number="+33600000009", at=at(30))  # the same call rang bob too, who answered it
    make_call(account, agent=bob, state=Call.State.ENDED, remote_number_e164="+33600000009",
              created_at=at(30) - timedelta(seconds=1), answered_at=at(30) + timedelta(seconds=5))
    ended(account, alice, number="+33600000005", cause=u.END_BUSY, at=at(30))  # busy: not a missed call
    ended(account, alice, number="+33600000006", cause=u.END_ANSWERED_ELSEWHERE, at=at(30))
    ended(account, bob, number="+33600000007", at=at(30))  # bob's
    ended(account, alice, number="", remote_number_raw="101", at=at(30))  # no number to call back
    ended(account, alice, number="+33600000008", at=since - timedelta(minutes=1))  # before today

    assert history.unreturned_missed(console.Viewer(alice.user, alice), since) == ["+33600000001", "+33600000004"]
    boss = console.Viewer(world["boss"].user, world["boss"])
    assert set(history.unreturned_missed(boss, since)) == {"+33600000001", "+33600000004", "+33600000007"}


def test_it_reads_many_agents_unreturned_missed_numbers_at_once_as_each_alone(world, monkeypatch,
                                                                               django_assert_num_queries):
    """Consoles connecting together read them in one query (issue 16), each agent's bounded as its own."""
    account, alice, bob = world["account"], world["alice"], world["bob"]
    monkeypatch.setattr(history, "UNRETURNED_MAX", 2)
    now = timezone.now()
    since = now - timedelta(minutes=50)
    for minutes_ago, number in [(40, "+33600000001"), (30, "+33600000002"), (20, "+33600000002"),
                                (15, "+33600000002"), (10, "+33600000002"), (9, "+33600000002"),
                                (8, "+33600000002"), (5, "+33600000003")]:
        ended(account, alice, number=number, at=now - timedelta(minutes=minutes_ago))
    ended(account, bob, number="+33600000007", at=now - timedelta(minutes=30))
    carol = make_agent("carol")
    agents = [alice, bob, carol]
    alone = {agent.pk: history.unreturned_missed(console.Viewer(agent.user, agent), since) for agent in agents}
    with django_assert_num_queries(1):
        together = history.unreturned_missed_by_agent([agent.pk for agent in agents], since)
    assert together == alone
    # Alice's newest ten rows hold only two numbers: her own query reads no further (UNRETURNED_MAX * 5).
    assert together[alice.pk] == ["+33600000003", "+33600000002"]
    assert together[carol.pk] == []


def test_it_reads_consoles_snapshots_together_as_each_alone(world, monkeypatch, django_assert_max_num_queries):
    account, alice, bob, boss = world["account"], world["alice"], world["bob"], world["boss"]
    monkeypatch.setattr(console, "RECENT_LIMIT", 2)
    now = timezone.now()
    for minutes_ago in (20, 15, 10):
        ended(account, alice, at=now - timedelta(minutes=minutes_ago))
    ended(account, alice, at=now - timedelta(hours=2))  # not recent
    ended(account, bob, at=now - timedelta(minutes=12))
    make_call(account, agent=bob, state=Call.State.RINGING, remote_number_e164="+33600000010")
    viewers = console.viewers_for([alice.user, bob.user, boss.user, alice.user])
    alone = [console.snapshot(viewer) for viewer in viewers]
    with django_assert_max_num_queries(12):  # not more for more consoles
        together = console.snapshots(viewers)
    for snapshot in (*alone, *together):
        snapshot["wallboard"] = snapshot.get("wallboard", {}) and {**snapshot["wallboard"], "as_of": None}
    assert together == alone
    assert [len(snapshot["calls"]) for snapshot in together] == [2, 2, 3, 2]
    assert together[1]["calls"][0]["state"] != "ended"  # live first


def test_it_sends_the_unreturned_missed_numbers_with_the_consoles_snapshot(world):
    alice = world["alice"]
    ended(world["account"], alice, number="+33600000001", at=timezone.now() - timedelta(seconds=30))
    snapshot = console.snapshot(console.Viewer(alice.user, alice))
    assert snapshot["unreturned_missed"] == ["+33600000001"]
