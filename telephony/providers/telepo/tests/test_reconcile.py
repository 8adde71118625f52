"""Snapshot reconcile against the simulator, and the tasks that run it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from telephony import updates as u
from telephony.domain import apply_call_update
from telephony.models import Call, PbxAccount
from telephony.providers.telepo import tasks
from telephony.providers.telepo.frames import parse_snapshot
from telephony.providers.telepo.reconcile import (
    ABSENCE_GRACE,
    _live_calls_missing,
    apply_call_state,
    apply_unless_newer,
    reconcile_account,
    reconcile_user,
)
from telephony.providers.telepo.tests.conftest import ALICE, SECRET
from tests.factories import make_account

pytestmark = pytest.mark.django_db


def test_it_brings_in_a_call_it_never_heard_of_with_its_token_actions_and_agent(account, terminal, world):
    sim_call = world.incoming_call(ALICE, "+33612345678", display_name="Bob")
    report = reconcile_user(account, ALICE)
    call = Call.objects.get(account=account, pbx_call_id=sim_call.call_id)
    assert (report.users, report.applied, report.ended) == (1, 1, 0)
    assert (call.state, call.direction, call.remote_number_e164, call.remote_label) == (
        "ringing", "in", "+33612345678", "Bob")
    assert (call.terminal, call.agent, call.state_token) == (terminal, terminal.agent, str(sim_call.state_token))
    assert call.allowed_actions == [u.ANSWER, u.PICKUP, u.REDIRECT, u.HANGUP]


def test_it_is_idempotent(account, terminal, world):
    world.incoming_call(ALICE, "+33612345678")
    reconcile_user(account, ALICE)
    version = Call.objects.get().version
    report = reconcile_user(account, ALICE)
    assert (report.applied, report.skipped, Call.objects.get().version) == (0, 1, version)


def test_it_takes_the_actions_another_call_brings_though_the_state_token_is_the_same(account, terminal, world):
    # Telepo's stateToken follows the call's own state: a second call of the user makes transfer and
    # conference possible on the first without a new token. Read as a replay of the snapshot stored
    # under that token, the first call's card would never offer them (#18's browser test, under load).
    first = world.incoming_call(ALICE, "+33612345601")
    world.answer(first.call_id)
    reconcile_user(account, ALICE)
    call = Call.objects.get(pbx_call_id=first.call_id)
    token = call.state_token
    assert u.CONFERENCE_ADD not in call.allowed_actions
    second = world.incoming_call(ALICE, "+33612345602")
    world.answer(second.call_id)
    assert str(world.call(first.call_id).state_token) == token  # the premise: the first call's token stays

    report = reconcile_user(account, ALICE)
    call.refresh_from_db()
    assert (call.state_token, u.CONFERENCE_ADD in call.allowed_actions) == (token, True)
    assert (report.applied, report.skipped) == (2, 0)
    assert reconcile_user(account, ALICE).unchanged == 2  # and then nothing is news


def test_it_gives_back_the_token_and_actions_a_late_webhook_took_from_the_call(account, terminal, world, queued):
    # Telepo's webhooks lag behind its snapshot: the EARLY and CONFIRMED of an answer the snapshot already
    # showed come after it, and each clears the call's token (a webhook says the state changed). The
    # snapshot they ask for has the same token as the first: it must give it back, with the actions.
    sim_call = world.incoming_call(ALICE, "+33612345678")
    world.answer(sim_call.call_id)
    reconcile_user(account, ALICE)
    token = str(world.call(sim_call.call_id).state_token)
    assert Call.objects.get().state_token == token
    for message in [m for m in world.sent if m["call_id"] == sim_call.call_id]:
        response = Client().post(f"/api/telepo/webhook/{SECRET}", data=json.dumps(message),
                                 content_type="application/json")
        assert response.json() == {"ok": True, "applied": True}
    assert (Call.objects.get().state_token, queued) == ("", [("reconcile_user_task", (account.pk, ALICE))])

    report = reconcile_user(account, ALICE)
    call = Call.objects.get()
    assert (call.state, call.state_token, report.applied) == ("talking", token, 1)
    assert call.allowed_actions == [u.HOLD, u.PARK, u.MUTE, u.SEND_DTMF, u.MOVE, u.REDIRECT, u.HANGUP]


def test_it_tells_a_snapshot_older_than_the_calls_news_from_one_that_changes_nothing(account, terminal, world):
    sim_call = world.incoming_call(ALICE, "+33612345678")
    reconcile_user(account, ALICE)
    assert (reconcile_user(account, ALICE).unchanged, reconcile_user(account, ALICE).older) == (1, 0)
    # A webhook's news, as of a minute from now: newer than any snapshot asked now.
    apply_call_update(u.CallUpdate(account_id=account.pk, pbx_call_id=sim_call.call_id, state=u.RINGING,
                                   kind="webhook", payload={}, occurred_at=timezone.now(), seq=1))
    Call.objects.update(updated_at=timezone.now() + timedelta(minutes=1))
    report = reconcile_user(account, ALICE)
    assert (report.older, report.unchanged, report.skipped, report.applied) == (1, 0, 1, 0)
    assert Call.objects.get(pbx_call_id=sim_call.call_id).state == "ringing"


def test_it_applies_an_actions_answer_over_a_snapshot_asked_before_the_action_though_applied_after(
        account, terminal, world):
    # A webhook's reconcile asks for the snapshot (the call ACTIVE), the agent holds the call, the reconcile
    # applies its snapshot while the hold is under way, then the hold's answer (HELD) comes back. The answer
    # is the newer news: the snapshot was asked before the hold was sent, whenever it was written. Judged by
    # when the snapshot was written, the answer was dropped and the card stayed "talking" until the next
    # periodic reconcile (the e2e test of a Telepo call's hold, under load).
    sim_call = world.incoming_call(ALICE, "+33612345678", display_name="Bob Smith")
    reconcile_user(account, ALICE)
    world.answer(sim_call.call_id)
    asked_at = timezone.now()
    (snapshot,) = parse_snapshot(world.snapshot(ALICE), account.pk, ALICE, asked_at).updates
    requested_at = timezone.now()
    answer = world.act(world.user(ALICE), "hold", sim_call.call_id, {})

    assert apply_unless_newer(snapshot, asked_at).changed
    assert apply_call_state(account, ALICE, answer, requested_at).changed
    call = Call.objects.get()
    assert (call.state, call.state_token) == ("held", str(answer["stateToken"]))
    # The other way round, the older snapshot changes nothing: it is older than the answer.
    assert apply_unless_newer(snapshot, asked_at) is None
    assert Call.objects.get().state == "held"


def test_it_keeps_a_webhooks_news_from_a_snapshot_asked_before_it_after_an_older_ones_answer(
        account, terminal, world):
    # The answer an older snapshot brings is written over the webhook's newer news: it must not make the
    # call's news look as old as that snapshot, or a snapshot asked between the two would undo the webhook.
    sim_call = world.incoming_call(ALICE, "+33612345678", display_name="Bob Smith")
    reconcile_user(account, ALICE)
    ringing_token = Call.objects.get().state_token
    world.answer(sim_call.call_id)
    first_asked = timezone.now()
    (first,) = parse_snapshot(world.snapshot(ALICE), account.pk, ALICE, first_asked).updates
    second_asked = timezone.now()
    (second,) = parse_snapshot(world.snapshot(ALICE), account.pk, ALICE, second_asked).updates
    apply_call_update(u.CallUpdate(account_id=account.pk, pbx_call_id=sim_call.call_id, state=u.RINGING,
                                   kind="webhook", payload={}, occurred_at=timezone.now(), seq=1))

    assert apply_unless_newer(first, first_asked).changed  # its answer only
    assert apply_unless_newer(second, second_asked) is None
    call = Call.objects.get()
    assert (call.state, call.answered_at, call.state_token) == ("talking", first_asked, ringing_token)


def test_it_moves_a_call_to_the_snapshots_state(account, terminal, world):
    sim_call = world.incoming_call(ALICE, "+33612345678")
    reconcile_user(account, ALICE)
    world.answer(sim_call.call_id)
    world.act(world.user(ALICE), "hold", sim_call.call_id, {})
    reconcile_user(account, ALICE)
    call = Call.objects.get()
    assert (call.state, call.state_token) == ("held", str(world.call(sim_call.call_id).state_token))
    assert u.RESUME in call.allowed_actions and call.answered_at is not None


def test_it_ends_a_live_call_the_full_snapshot_no_longer_lists(account, terminal, world):
    sim_call = world.incoming_call(ALICE, "+33612345678")
    reconcile_user(account, ALICE)
    world.hangup(sim_call.call_id)  # and its webhook is lost
    Call.objects.update(updated_at=timezone.now() - ABSENCE_GRACE - timedelta(seconds=1))
    assert reconcile_user(account, ALICE).ended == 1
    call = Call.objects.get()
    assert (call.state, call.end_cause, call.allowed_actions) == ("ended", u.END_NO_ANSWER, [])


def test_it_gives_a_call_telepo_just_spoke_of_time_for_its_late_terminated_before_ending_it(
    account, terminal, world, queued
):
    # Telepo's webhooks lag behind its snapshot: the TERMINATED that says "answered" may still be on its way.
    sim_call = world.incoming_call(ALICE, "+33612345678")
    reconcile_user(account, ALICE)
    world.answer(sim_call.call_id)
    world.hangup(sim_call.call_id)
    report = reconcile_user(account, ALICE)
    assert (report.ended, Call.objects.get().state) == (0, "ringing")
    assert queued == [("reconcile_user_task", (account.pk, ALICE))]  # a second look once the grace is over
    apply_call_update(u.CallUpdate(account_id=account.pk, pbx_call_id=sim_call.call_id, state=u.ENDED,
                                   kind="webhook", payload={}, occurred_at=timezone.now(), terminal_pbx_id=ALICE,
                                   seq=3, answered_at=timezone.now()))
    assert reconcile_user(account, ALICE).ended == 0
    call = Call.objects.get()
    assert (call.state, call.answered_at is not None, call.end_cause) == ("ended", True, u.END_HANGUP)


def test_it_keeps_the_sweep_off_a_long_call_every_snapshot_still_lists(account, terminal, world):
    # A snapshot that changes nothing writes nothing: a call talking for five hours (or queued for twenty
    # minutes) looked silent to the stale-call sweep, which ended it while Telepo still had it.
    from telephony.sweep import sweep_stale_calls

    long_call = world.incoming_call(ALICE, "+33612345678")
    world.answer(long_call.call_id)
    reconcile_user(account, ALICE)
    five_hours_ago = timezone.now() - timedelta(hours=5)
    Call.objects.filter(pbx_call_id=long_call.call_id).update(updated_at=five_hours_ago)
    forgotten = apply_call_update(u.CallUpdate(  # a call Telepo no longer lists, as silent
        account_id=account.pk, pbx_call_id="gone-long-ago", state=u.TALKING, kind="webhook", payload={},
        occurred_at=five_hours_ago)).call
    Call.objects.filter(pk=forgotten.pk).update(updated_at=five_hours_ago)

    version = Call.objects.get(pbx_call_id=long_call.call_id).version
    report = reconcile_user(account, ALICE)
    noted = Call.objects.get(pbx_call_id=long_call.call_id).updated_at
    again = reconcile_user(account, ALICE)  # within STILL_LIVE_EVERY: nothing written again

    call = Call.objects.get(pbx_call_id=long_call.call_id)
    assert (report.applied, call.state, call.version) == (0, "talking", version)  # no change, no event
    assert call.updated_at == noted > five_hours_ago and again.applied == 0
    assert sweep_stale_calls() == [forgotten.pk]
    assert Call.objects.get(pbx_call_id=long_call.call_id).state == "talking"


def test_it_ends_nothing_from_a_partial_snapshot(account, terminal, world, monkeypatch):
    world.incoming_call(ALICE, "+33612345678")
    reconcile_user(account, ALICE)
    monkeypatch.setattr(world, "snapshot", lambda user_id: {"fullState": False, "calls": []})
    assert reconcile_user(account, ALICE).ended == 0
    assert Call.objects.get().state == "ringing"


def test_it_never_lets_an_older_snapshot_undo_what_a_webhook_said_since(account, terminal):
    asked_at = timezone.now()
    apply_call_update(u.CallUpdate(account_id=account.pk, pbx_call_id="c1", state=u.TALKING, kind="webhook",
                                   payload={}, occurred_at=timezone.now(), terminal_pbx_id=ALICE, seq=2))
    older = u.CallUpdate(account_id=account.pk, pbx_call_id="c1", state=u.RINGING, kind="snapshot", payload={},
                         occurred_at=asked_at, terminal_pbx_id=ALICE)
    assert apply_unless_newer(older, asked_at) is None
    assert apply_unless_newer(older, timezone.now() + timedelta(seconds=1)).changed
    assert Call.objects.get().state == "ringing"


def test_it_leaves_a_call_that_changed_after_the_snapshot_was_asked_out_of_the_missing(account, terminal):
    asked_at = timezone.now()
    apply_call_update(u.CallUpdate(account_id=account.pk, pbx_call_id="new", state=u.RINGING, kind="webhook",
                                   payload={}, occurred_at=timezone.now(), terminal_pbx_id=ALICE, seq=1))
    assert list(_live_calls_missing(account, ALICE, set(), asked_at)) == []
    assert [c.pbx_call_id for c in _live_calls_missing(account, ALICE, set(), timezone.now())] == ["new"]


def test_it_reports_every_users_snapshot_on_the_account_status(account, terminal, world):
    world.incoming_call(ALICE, "+33612345678")
    report = reconcile_account(account)
    account.refresh_from_db()
    assert (report.users, report.applied, account.status) == (1, 1, PbxAccount.Status.CONNECTED)


def test_it_marks_the_account_failed_when_telepo_refuses_the_ticket(account, terminal, world):
    world.tickets.clear()
    report = reconcile_account(account)
    account.refresh_from_db()
    assert account.status == PbxAccount.Status.FAILED and "API ticket" in account.last_error
    assert len(report.errors) == 1


def test_it_queues_one_reconcile_per_enabled_telepo_account(account, queued):
    make_account(kind=PbxAccount.Kind.TELEPO, base_url="https://t.example.com", enabled=False)
    make_account(kind=PbxAccount.Kind.ISTRA_MYRCC)
    assert tasks.reconcile_telepo_accounts_task() == 1
    assert queued == [("reconcile_account_task", (account.pk,))]


def test_it_runs_the_account_task_on_the_simulator(account, terminal, world):
    world.incoming_call(ALICE, "+33612345678")
    assert tasks.reconcile_account_task(account.pk) == {"users": 1, "applied": 1, "ended": 0, "unchanged": 0,
                                                        "older": 0, "unreadable": 0, "errors": 0}
    assert tasks.reconcile_account_task(999_999) == {}


def test_it_logs_a_failed_user_reconcile_without_raising(account, terminal, world, caplog):
    world.tickets.clear()
    tasks.reconcile_user_task(account.pk, ALICE)
    assert any("snapshot of alice@organization.org failed" in r.getMessage() for r in caplog.records)


def test_it_reconciles_when_a_worker_starts(queued):
    tasks._reconcile_on_start()
    assert queued == [("reconcile_telepo_accounts_task", ())]


@pytest.mark.parametrize("since", ["ended-as-missed", "still-ringing"])
def test_it_takes_the_answer_an_older_snapshot_saw_though_the_call_changed_since(account, terminal, world, since):
    # Two reconciles overlap: the first asked while the call was ACTIVE at Telepo, the second (or a
    # webhook) changed the call before the first applied. The call's other news wins, but "it was
    # answered" is true whatever came since, and may be the only word of it (its CONFIRMED lost).
    sim_call = world.incoming_call(ALICE, "+33612345678")
    reconcile_user(account, ALICE)
    world.answer(sim_call.call_id)
    asked_at = timezone.now()
    snapshot = parse_snapshot(world.snapshot(ALICE), account.pk, ALICE, asked_at).updates[0]
    if since == "ended-as-missed":
        apply_call_update(u.CallUpdate(account_id=account.pk, pbx_call_id=sim_call.call_id, state=u.ENDED,
                                       kind="snapshot", payload={"absentFromSnapshot": True},
                                       occurred_at=timezone.now(), frame_id="absent"))
    else:
        apply_call_update(u.CallUpdate(account_id=account.pk, pbx_call_id=sim_call.call_id, state=u.RINGING,
                                       kind="webhook", payload={}, occurred_at=timezone.now(), seq=1))
    assert Call.objects.get().answered_at is None

    assert apply_unless_newer(snapshot, asked_at).changed
    call = Call.objects.get()
    assert call.answered_at == asked_at  # at the latest when the snapshot was asked
    if since == "ended-as-missed":
        assert (call.state, call.end_cause) == ("ended", u.END_HANGUP)
    else:
        assert call.state == "talking"
    assert apply_unless_newer(snapshot, asked_at) is None  # once


def test_it_takes_no_answer_from_an_older_snapshot_of_a_call_only_a_voicemail_took(account, terminal, world):
    sim_call = world.incoming_call(ALICE, "+33612345678")
    reconcile_user(account, ALICE)
    world.answer(sim_call.call_id)
    asked_at = timezone.now()
    snapshot = parse_snapshot(world.snapshot(ALICE), account.pk, ALICE, asked_at).updates[0]
    apply_call_update(u.CallUpdate(account_id=account.pk, pbx_call_id=sim_call.call_id, state=u.RINGING,
                                   kind="webhook", payload={"state": "CONFIRMED", "device_type": "VOICEMAIL",
                                                            "seq_num": 2}, occurred_at=timezone.now(), seq=2))
    assert apply_unless_newer(snapshot, asked_at) is None
    assert Call.objects.get().answered_at is None
