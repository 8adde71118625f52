"""Words the spec does not list (issue 14, point 1): one unknown value never costs a message or a snapshot.

A webhook state or snapshot status ctihub does not know keeps its call live in
its last known state, with the raw value in the stored event, and every other
call of the snapshot applies. Recorded frames (``fixtures/``) go through the real
webhook view and snapshot reconcile; the simulator says the same words on demand.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from telephony import updates as u
from telephony.domain import apply_call_update
from telephony.models import Call
from telephony.providers.telepo.frames import forget_noted
from telephony.providers.telepo.reconcile import ABSENCE_GRACE, reconcile_user
from telephony.providers.telepo.tests.conftest import ALICE, SECRET

pytestmark = pytest.mark.django_db
FIXTURES = Path(__file__).parent / "fixtures"
URL = f"/api/telepo/webhook/{SECRET}"


@pytest.fixture(autouse=True)
def _log_every_unknown_value_again():
    forget_noted()
    yield
    forget_noted()


def fixture(name: str):
    return json.loads((FIXTURES / f"{name}.json").read_text())


def post(message: dict):
    return Client().post(URL, data=json.dumps(message), content_type="application/json")


# --- the webhook ------------------------------------------------------------------------------------

def test_it_keeps_a_talking_call_talking_through_a_state_it_does_not_know(account, terminal, queued, caplog):
    early, confirmed, referred, terminated = fixture("webhooks_unknown_state")
    post(early)
    post(confirmed)
    with caplog.at_level(logging.WARNING, logger="telephony.providers.telepo"):
        response = post(referred)
    assert (response.status_code, response.json()) == (200, {"ok": True, "applied": True})
    call = Call.objects.get(pbx_call_id=referred["call_id"])
    assert (call.state, call.last_seq, call.ended_at) == ("talking", 3, None)
    assert call.events.order_by("id").last().payload["state"] == "REFERRED"  # the raw value, kept
    assert [(r.account_id, r.getMessage()) for r in caplog.records] == [
        (account.pk, "Telepo sent an unknown webhook state 'REFERRED': kept as given, the rest applies")]
    post(terminated)
    call.refresh_from_db()
    assert (call.state, call.end_cause, call.talking_ms) == ("ended", u.END_HANGUP, 60_000)


def test_it_takes_a_call_in_from_a_first_message_whose_state_it_does_not_know(account, terminal, queued):
    referred = fixture("webhooks_unknown_state")[2]
    assert post(referred).status_code == 200
    call = Call.objects.get(pbx_call_id=referred["call_id"])
    assert (call.state, call.direction, call.remote_number_e164, call.agent, call.answered_at) == (
        "ringing", "in", "+33612345678", terminal.agent, None)  # live, and everything else it said
    assert queued == [("reconcile_user_task", (account.pk, ALICE))]  # the snapshot says where it is


def test_it_applies_a_webhook_with_an_unknown_termination_reason(account, terminal, queued):
    early, *_ = fixture("webhooks_unknown_state")
    post(early)
    ended = {**early, "seq_num": 2, "state": "TERMINATED", "termination-reason": "TIMEOUT"}
    assert post(ended).status_code == 200
    call = Call.objects.get(pbx_call_id=early["call_id"])
    assert (call.state, call.end_cause) == ("ended", u.END_NO_ANSWER)


def test_it_keeps_a_call_ringing_when_the_simulator_names_its_answer_in_other_words(account, terminal, world, queued):
    world.add_rule("rename", state="CONFIRMED", to="ANSWERED")
    sim_call = world.incoming_call(ALICE, "+33612345678")
    world.answer(sim_call.call_id)
    assert [m["state"] for m in world.sent] == ["EARLY", "ANSWERED"]
    for message in world.sent:
        assert post(message).status_code == 200
    call = Call.objects.get(pbx_call_id=sim_call.call_id)
    assert (call.state, call.last_seq) == ("ringing", 2)
    reconcile_user(account, ALICE)  # the snapshot says ACTIVE: now it is talking
    call.refresh_from_db()
    assert call.state == "talking" and call.answered_at is not None


# --- the snapshot -----------------------------------------------------------------------------------

def hub_call(account, call_id: str, state: str) -> Call:
    apply_call_update(u.CallUpdate(account_id=account.pk, pbx_call_id=call_id, state=state, kind="snapshot",
                                   payload={}, occurred_at=timezone.now(), terminal_pbx_id=ALICE, direction=u.INBOUND,
                                   state_token="487345001"))
    Call.objects.filter(pbx_call_id=call_id).update(updated_at=timezone.now() - ABSENCE_GRACE - timedelta(seconds=1))
    return Call.objects.get(pbx_call_id=call_id)


@pytest.mark.parametrize("known_as", ["ringing", "talking"])
def test_it_applies_every_other_call_of_a_snapshot_with_a_status_it_does_not_know(
    account, terminal, world, queued, monkeypatch, known_as
):
    hub_call(account, "c-queued", known_as)
    monkeypatch.setattr(world, "snapshot", lambda user_id: fixture("snapshot_unknown_status"))
    report = reconcile_user(account, ALICE)
    assert (report.applied, report.ended, report.errors) == (2, 0, [])
    active = Call.objects.get(pbx_call_id="c-active")
    assert (active.state, active.remote_label, active.state_token) == ("talking", "Carol", "487345467")
    queued_call = Call.objects.get(pbx_call_id="c-queued")
    assert (queued_call.state, queued_call.ended_at) == (known_as, None)  # live, in its last known state
    assert (queued_call.state_token, queued_call.allowed_actions) == ("487345460", [u.PICKUP, u.HANGUP])
    assert queued_call.events.order_by("id").last().payload["status"] == "QUEUED"


def test_it_ends_no_call_because_a_snapshot_call_had_no_readable_id(account, terminal, world, queued, monkeypatch):
    hub_call(account, "c-live", "talking")
    monkeypatch.setattr(world, "snapshot", lambda user_id: {"fullState": True, "calls": [
        {"status": "ACTIVE"}, {"callId": "c-other", "status": "RINGING", "inbound": True}]})
    report = reconcile_user(account, ALICE)
    assert (report.applied, report.ended, report.skipped) == (1, 0, 1)
    assert Call.objects.get(pbx_call_id="c-live").state == "talking"  # the unreadable call may be this one


def test_it_reads_the_simulators_snapshot_with_a_status_renamed(account, terminal, world, queued):
    first = world.incoming_call(ALICE, "+33612345678")
    reconcile_user(account, ALICE)
    world.answer(first.call_id)  # its CONFIRMED is not posted here: only the snapshot tells
    world.set_status_name(first.call_id, "BRIDGED")
    second = world.answer(world.incoming_call(ALICE, "+33622222222").call_id)
    Call.objects.update(updated_at=timezone.now() - timedelta(seconds=1))
    report = reconcile_user(account, ALICE)
    assert (report.applied, report.ended) == (2, 0)
    calls = {c.pbx_call_id: c for c in Call.objects.all()}
    assert (calls[first.call_id].state, calls[second.call_id].state) == ("ringing", "talking")
    assert calls[first.call_id].state_token == str(world.call(first.call_id).state_token)  # the rest applied


# --- the card shows the PBX's word --------------------------------------------------------------------

def test_it_names_an_unknown_webhook_state_or_snapshot_status_as_the_pbx_state_and_a_known_one_not():
    from datetime import datetime

    from telephony.providers.telepo.frames import parse_call_state, parse_webhook

    early, confirmed, referred, _ = fixture("webhooks_unknown_state")
    assert [parse_webhook(m, 1).pbx_state for m in (early, confirmed, referred)] == [None, None, "REFERRED"]
    assert parse_webhook({**early, "state": None}, 1).pbx_state == "None"  # no word: said so, not left blank
    now = datetime.now(UTC)
    calls = {c["callId"]: c for c in fixture("snapshot_unknown_status")["calls"]}
    assert parse_call_state(calls["c-queued"], 1, ALICE, now).pbx_state == "QUEUED"
    assert parse_call_state(calls["c-active"], 1, ALICE, now).pbx_state is None


def test_it_keeps_the_pbxs_word_for_a_state_on_the_call_until_a_known_one_comes(account, terminal, queued):
    early, confirmed, referred, terminated = fixture("webhooks_unknown_state")
    post(early)
    post(confirmed)
    post(referred)
    call = Call.objects.get(pbx_call_id=referred["call_id"])
    assert (call.state, call.pbx_state) == ("talking", "REFERRED")
    post(terminated)
    call.refresh_from_db()
    assert (call.state, call.pbx_state) == ("ended", "")


def test_it_keeps_the_snapshots_word_for_a_status_on_the_call(account, terminal, world, queued, monkeypatch):
    hub_call(account, "c-queued", "ringing")
    monkeypatch.setattr(world, "snapshot", lambda user_id: fixture("snapshot_unknown_status"))
    reconcile_user(account, ALICE)
    calls = {c.pbx_call_id: c for c in Call.objects.all()}
    assert (calls["c-queued"].state, calls["c-queued"].pbx_state) == ("ringing", "QUEUED")
    assert calls["c-active"].pbx_state == ""
