"""Call-history backfill: missing calls are created through the domain, socket-recorded ones never twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import requests
from django.utils import timezone

from telephony.domain import apply_call_update
from telephony.models import Call, PbxAccount
from telephony.providers.istra_enduser import frames
from telephony.providers.istra_enduser.backfill import LATE_DROP_WINDOW, MATCH_TOLERANCE, backfill_account
from telephony.providers.istra_enduser.tasks import backfill_account_task
from telephony.providers.istra_enduser.tests.conftest import fixture_json
from tests.factories import make_account, make_agent, make_call, make_terminal
from tests.support.recorded import late_mycrm_drop

pytestmark = pytest.mark.django_db

TERMINAL = "5985841581756135023"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)  # "now" for the backfill: every entry has settled


def entry(n: int, at: datetime, number="0612345678", incoming=True, missed=True, ring=10, talk=0) -> frames.HistoryEntry:
    item = {**fixture_json("call_history.json")["items"][0], "callHistoryId": f"900719925474099{n:04d}",
            "timestamp": str(int(at.timestamp())), "remoteNumber": number, "isIncoming": incoming,
            "isMissed": missed, "ringDurationSecond": ring, "talkDurationSecond": talk}
    return frames.parse_history_entry(item)


@pytest.fixture
def setup(db):
    agent = make_agent(extension_code="144", retailcrm_user_id="7")
    enduser = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url="http://127.0.0.1:8100/restletrouter",
                           default_region="FR")
    make_terminal(enduser, pbx_id=TERMINAL, agent=agent, label="Desk")
    mycrm = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url="http://127.0.0.1:8100/restletrouter/",
                         default_region="FR")
    socket_terminal = make_terminal(mycrm, pbx_id=TERMINAL, agent=agent)
    return enduser, mycrm, socket_terminal, agent


def socket_call(account, terminal, at: datetime, number="+33612345678", direction=Call.Direction.INBOUND, **fields):
    return make_call(account, terminal=terminal, agent=terminal.agent, direction=direction, state=Call.State.ENDED,
                     remote_number_e164=number, remote_number_raw=number, created_at=at, ended_at=at, **fields)


def test_it_creates_a_call_no_socket_recorded_with_its_times_terminal_and_agent(setup):
    enduser, _, _, agent = setup
    answered = entry(1, T0, number="+33412345670", incoming=False, missed=False, ring=6, talk=95)
    report = backfill_account(enduser, [answered], now=LATER)
    [call] = Call.objects.filter(pk__in=report.created)
    assert call.pbx_call_id == "history:9007199254740990001"
    assert (call.account_id, call.terminal.pbx_id, call.agent_id) == (enduser.pk, TERMINAL, agent.pk)
    assert (call.direction, call.state, call.remote_number_e164) == ("out", "ended", "+33412345670")
    assert call.created_at == T0
    assert call.answered_at == T0 + timedelta(seconds=6)
    assert call.ended_at == T0 + timedelta(seconds=101)
    assert (call.ringing_ms, call.talking_ms, call.end_cause) == (6000, 95000, "hangup")
    assert list(call.events.values_list("kind", flat=True)) == ["callHistory", "callHistory"]


def test_it_never_creates_a_call_twice_however_often_it_runs(setup):
    enduser, *_ = setup
    entries = [entry(1, T0), entry(2, T0 + timedelta(minutes=5), missed=False, talk=30)]
    first = backfill_account(enduser, entries, now=LATER)
    second = backfill_account(enduser, entries, now=LATER)
    assert (len(first.created), len(second.created), second.already_backfilled) == (2, 0, 2)
    assert Call.objects.filter(account=enduser).count() == 2


def test_it_skips_a_call_a_socket_recorded_on_the_same_terminal(setup):
    enduser, mycrm, socket_terminal, _ = setup
    socket_call(mycrm, socket_terminal, T0 + timedelta(seconds=2))  # socket and PBX log time it differently
    report = backfill_account(enduser, [entry(1, T0)], now=LATER)
    assert (report.created, report.seen_by_socket) == ([], 1)
    assert Call.objects.count() == 1


def test_it_matches_a_myrcc_call_by_the_extension_the_history_names(setup):
    enduser, *_ = setup
    myrcc = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url="http://127.0.0.1:8100/restletrouter")
    extension = make_terminal(myrcc, pbx_id="897778778", extension="144")  # no agent assigned on myRCC
    socket_call(myrcc, extension, T0, number="+33612345678")
    assert backfill_account(enduser, [entry(1, T0)], now=LATER).seen_by_socket == 1


def test_it_creates_the_call_when_the_socket_saw_a_different_number_direction_or_time(setup):
    enduser, mycrm, socket_terminal, _ = setup
    socket_call(mycrm, socket_terminal, T0, number="+33699999999")
    socket_call(mycrm, socket_terminal, T0, direction=Call.Direction.OUTBOUND)
    socket_call(mycrm, socket_terminal, T0 - MATCH_TOLERANCE - timedelta(seconds=1))
    report = backfill_account(enduser, [entry(1, T0)], now=LATER)
    assert (len(report.created), report.seen_by_socket) == (1, 0)


def test_it_does_not_count_a_call_on_another_platform(setup):
    enduser, _, _, agent = setup
    elsewhere = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url="https://other.example.com/restletrouter")
    socket_call(elsewhere, make_terminal(elsewhere, pbx_id=TERMINAL, agent=agent), T0)
    assert len(backfill_account(enduser, [entry(1, T0)], now=LATER).created) == 1


def test_it_lets_one_socket_call_stand_for_one_entry_only(setup):
    # The customer called twice, a minute apart; the socket was down for the first call.
    enduser, mycrm, socket_terminal, _ = setup
    socket_call(mycrm, socket_terminal, T0 + timedelta(seconds=61))
    report = backfill_account(enduser, [entry(1, T0), entry(2, T0 + timedelta(seconds=60))], now=LATER)
    [created] = Call.objects.filter(pk__in=report.created)
    assert created.pbx_call_id == "history:9007199254740990001"
    assert report.seen_by_socket == 1


def test_it_waits_for_an_entry_that_just_ended_since_a_socket_may_still_report_it(setup):
    enduser, *_ = setup
    report = backfill_account(enduser, [entry(1, T0)], now=T0 + timedelta(seconds=30))
    assert (report.created, report.not_settled) == ([], 1)


def test_it_ignores_entries_past_the_horizon(setup):
    enduser, *_ = setup
    assert backfill_account(enduser, [entry(1, T0)], now=T0 + timedelta(days=3)).too_old == 1


def test_it_says_on_the_account_why_a_backfill_failed_and_keeps_its_status(sim):
    sim.state.istra.add_user("chatfield", "0000")
    enduser = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=sim.istra_base, login="chatfield",
                           password="wrong", status=PbxAccount.Status.CONNECTED)
    report = backfill_account_task(enduser.pk)
    enduser.refresh_from_db()
    assert "check the login and password" in report["error"]
    assert enduser.last_error.startswith("call-history backfill: Istra myIstra refused")
    assert enduser.status == PbxAccount.Status.CONNECTED


def test_the_schedule_queues_one_backfill_per_enabled_end_user_account(db, monkeypatch):
    from telephony.providers.istra_enduser import tasks

    queued_ids = []
    monkeypatch.setattr(tasks, "enqueue", lambda task, *args, countdown=None: queued_ids.append((task.name, args)))
    wanted = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER)
    make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, enabled=False)
    make_account(kind=PbxAccount.Kind.ISTRA_MYCRM)
    assert tasks.backfill_enduser_accounts_task() == 1
    assert queued_ids == [("telephony.providers.istra_enduser.tasks.backfill_account_task", (wanted.pk,))]


# --- calls a socket saw begin but never end -------------------------------------------------------


def socket_saw_ring(account, terminal, at: datetime, call_id="-77", number="0612345678", incoming=True) -> Call:
    """What a myCrm socket stores from a callRinging, before it went down and missed the call's end."""
    from telephony import updates as u
    from telephony.domain import apply_call_update

    applied = apply_call_update(u.CallUpdate(
        account_id=account.pk, pbx_call_id=call_id, state=u.RINGING if incoming else u.DIALING, kind="callRinging",
        payload={}, occurred_at=at, terminal_pbx_id=terminal.pbx_id, direction=u.INBOUND if incoming else u.OUTBOUND,
        remote_number=number,
    ))
    return applied.call


def test_it_ends_a_call_its_socket_saw_begin_but_never_end_without_waiting_and_only_once(setup):
    enduser, mycrm, socket_terminal, _ = setup
    call = socket_saw_ring(mycrm, socket_terminal, T0 + timedelta(seconds=1))
    answered = entry(1, T0, missed=False, ring=6, talk=95)
    just_after = answered.ended_at + timedelta(seconds=1)  # well inside SETTLE_AFTER: ending a live call needs no wait

    report = backfill_account(enduser, [answered], now=just_after)
    call.refresh_from_db()
    assert (report.ended_live, report.created, report.seen_by_socket) == ([call.pk], [], 0)
    assert (call.state, call.end_cause) == (Call.State.ENDED, "hangup")
    assert call.answered_at == T0 + timedelta(seconds=6) == answered.ended_at - timedelta(seconds=95)
    assert call.ended_at == T0 + timedelta(seconds=101)
    assert (call.ringing_ms, call.talking_ms) == (6000, 95000)
    assert call.events.last().kind == "history.ended"

    again = backfill_account(enduser, [answered], now=LATER)
    assert (again.ended_live, again.created, again.seen_by_socket) == ([], [], 1)
    assert call.events.count() == 2 and Call.objects.count() == 1


def test_it_ends_a_call_still_ringing_as_missed_when_the_history_says_so(setup):
    enduser, mycrm, socket_terminal, _ = setup
    call = socket_saw_ring(mycrm, socket_terminal, T0)
    report = backfill_account(enduser, [entry(1, T0, missed=True, ring=20)], now=LATER)
    call.refresh_from_db()
    assert report.ended_live == [call.pk]
    assert (call.state, call.end_cause, call.answered_at, call.ringing_ms, call.talking_ms) == (
        Call.State.ENDED, "no_answer", None, 20000, 0)


def test_it_never_ends_a_live_call_that_began_after_the_entrys_call_was_over(setup):
    # The customer called back 30 s after a short missed call its socket never saw.
    enduser, mycrm, socket_terminal, _ = setup
    callback = socket_saw_ring(mycrm, socket_terminal, T0 + timedelta(seconds=30))
    report = backfill_account(enduser, [entry(1, T0, missed=True, ring=5)], now=LATER)
    callback.refresh_from_db()
    assert callback.state == Call.State.RINGING
    assert (report.ended_live, len(report.created)) == ([], 1)


# --- reconciling a myCrm account after its socket reconnects --------------------------------------


def test_the_reconcile_after_a_reconnect_uses_the_end_user_account_of_the_same_login_and_server(db, monkeypatch):
    from telephony.providers.istra_enduser import backfill, tasks

    reconciled = []
    monkeypatch.setattr(backfill, "backfill_account", lambda account: reconciled.append(account.pk) or
                        backfill.BackfillReport())
    host = "http://127.0.0.1:8100/restletrouter"
    mycrm = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url=host, login="chatfield")
    make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=host, login="bob")
    make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url="https://other.example.com/restletrouter",
                 login="chatfield")
    make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=host, login="chatfield", enabled=False)
    wanted = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=f"{host}/", login="Chatfield")

    assert tasks.reconcile_after_reconnect_task(mycrm.pk)["enduser_account_id"] == wanted.pk
    assert reconciled == [wanted.pk]
    loner = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url=host, login="alice")
    assert tasks.reconcile_after_reconnect_task(loner.pk) == {}  # no history: the stale-call sweep is its net
    assert reconciled == [wanted.pk]


def test_the_reconcile_after_a_reconnect_ends_a_call_from_the_users_history_at_the_pbx(sim):
    from telephony.providers.istra_enduser.tasks import reconcile_after_reconnect_task

    world = sim.state.istra
    world.add_user("chatfield", "0000")
    world.add_extension(TERMINAL, "144", label="Desk", owner="chatfield")
    agent = make_agent(extension_code="144")
    mycrm = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url=sim.istra_base, login="chatfield",
                         password="0000", default_region="FR")
    enduser = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=sim.istra_base, login="chatfield",
                           password="0000", default_region="FR")
    make_terminal(enduser, pbx_id=TERMINAL, agent=agent)
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    call = socket_saw_ring(mycrm, make_terminal(mycrm, pbx_id=TERMINAL, agent=agent), started + timedelta(seconds=1))
    added = requests.post(f"{sim.url}/_sim/istra/enduser/history", timeout=5, json={
        "login": "chatfield", "remoteNumber": "0612345678", "isIncoming": True, "isMissed": False,
        "ringDurationSecond": 3, "talkDurationSecond": 20, "timestamp": int(started.timestamp()),
    })
    assert added.status_code == 201

    report = reconcile_after_reconnect_task(mycrm.pk)
    call.refresh_from_db()
    assert (report["enduser_account_id"], report["ended_live"]) == (enduser.pk, 1)
    assert (call.state, call.answered_at, call.talking_ms) == (
        Call.State.ENDED, started + timedelta(seconds=3), 20000)


# --- a socket's drop that comes after the backfill stored its call ---------------------------------------


def late_drop(account, call_id="-431", number="+33612345678", talking_ms=30000, incoming=True):
    """The drop a myCrm socket got after a reconnect (recorded), for another call, read by the myCrm parser as the
    socket's listener reads it."""
    from telephony.providers.istra_mycrm.frames import parse_mycrm_frame

    frame = late_mycrm_drop(call_id, number, talking_ms, incoming)
    [update] = parse_mycrm_frame(json.dumps(frame), account.pk, TERMINAL)
    return update


@pytest.fixture
def backfilled(setup):
    """A call the socket missed, ended four minutes ago, that the backfill stored from the history."""
    enduser, *_ = setup
    began = timezone.now() - timedelta(minutes=5)
    report = backfill_account(enduser, [entry(1, began, missed=False, talk=30)], now=timezone.now())
    [call] = Call.objects.filter(pk__in=report.created)
    return call


def test_it_takes_a_late_drop_of_a_backfilled_call_for_that_call(setup, backfilled):
    _, mycrm, *_ = setup
    applied = apply_call_update(late_drop(mycrm))
    assert applied.call.pk == backfilled.pk and not applied.changed
    assert Call.objects.count() == 1  # one record of the call, so one upload to retailCRM
    assert sorted(backfilled.events.values_list("kind", flat=True)) == ["callDropped", "callHistory",
                                                                         "callHistory"]


def test_it_lets_one_backfilled_call_stand_for_one_late_drop_only(setup, backfilled):
    # Two missed-by-the-socket calls of the same customer, one in the history so far: the second is a call.
    _, mycrm, *_ = setup
    apply_call_update(late_drop(mycrm, "-431"))
    second = apply_call_update(late_drop(mycrm, "-432"))
    assert second.changed and second.call.pbx_call_id == "-432" and second.call.account_id == mycrm.pk
    assert Call.objects.count() == 2


@pytest.mark.parametrize("difference", [
    {"number": "+33699999999"},
    {"talking_ms": 0},  # missed, where the history says answered
    {"talking_ms": 45000},  # answered, but not for as long
    {"incoming": False},
])
def test_it_stores_a_late_drop_that_is_not_the_backfilled_call_as_a_call_of_its_own(setup, backfilled, difference):
    _, mycrm, *_ = setup
    applied = apply_call_update(late_drop(mycrm, **difference))
    assert applied.changed and applied.call.account_id == mycrm.pk
    assert Call.objects.count() == 2


def test_it_does_not_look_past_its_window_or_at_another_platform(setup, backfilled):
    _, _, _, agent = setup
    elsewhere = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url="https://other.example.com/restletrouter")
    make_terminal(elsewhere, pbx_id=TERMINAL, agent=agent)
    assert apply_call_update(late_drop(elsewhere)).changed
    Call.objects.filter(pk=backfilled.pk).update(ended_at=timezone.now() - LATE_DROP_WINDOW - timedelta(minutes=1))
    _, mycrm, *_ = setup
    assert apply_call_update(late_drop(mycrm, "-433")).changed
    assert Call.objects.count() == 3
