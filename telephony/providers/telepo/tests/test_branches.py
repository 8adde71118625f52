"""Telepo calls on several devices (issue 14, point 3): a call ends with its last branch, voicemail is no answer.

Recorded message sequences (``fixtures/webhooks_*.json``: one call, each message
with its ``branch_id`` and ``device_type``) are posted to the real webhook view,
and the simulator rings, answers, declines and diverts calls on several devices
the same way.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from telephony import updates as u
from telephony.models import Call
from telephony.providers.telepo.reconcile import ABSENCE_GRACE, reconcile_user
from telephony.providers.telepo.tests.conftest import ALICE, DEVICE, SECRET
from tests.support.telepo_sim import DOMAIN

pytestmark = pytest.mark.django_db
FIXTURES = Path(__file__).parent / "fixtures"
URL = f"/api/telepo/webhook/{SECRET}"
MOBILE = "+1555555"
VOICEMAIL = "vm-alice"


def messages(name: str) -> list[dict]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def post(message: dict) -> None:
    response = Client().post(URL, data=json.dumps(message), content_type="application/json")
    assert response.status_code == 200, response.content


def the_call(messages_of_it: list[dict]) -> Call:
    return Call.objects.get(pbx_call_id=messages_of_it[0]["call_id"])


def at(message: dict) -> datetime:
    return datetime.strptime(message["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")


def states_after_each(sequence: list[dict]) -> list[str]:
    states = []
    for message in sequence:
        post(message)
        states.append(the_call(sequence).state)
    return states


# --- recorded sequences ----------------------------------------------------------------------------

def test_it_keeps_a_call_answered_on_the_mobile_while_the_softphone_stops_ringing(account, terminal, queued):
    sequence = messages("webhooks_two_devices_answered")
    # EARLY soft, EARLY mobile, CONFIRMED mobile, TERMINATED soft (ANSWERED_ELSEWHERE), TERMINATED mobile (HANGUP)
    assert states_after_each(sequence) == ["ringing", "ringing", "talking", "talking", "ended"]
    call = the_call(sequence)
    assert (call.end_cause, call.answered_at, call.ended_at) == (u.END_HANGUP, at(sequence[2]), at(sequence[4]))
    assert call.talking_ms == 60_000  # the whole conversation, not the 40 ms until the softphone stopped
    assert [e.payload["branch_id"] for e in call.events.order_by("id")] == [m["branch_id"] for m in sequence]


def test_it_goes_on_ringing_when_one_device_declines(account, terminal, queued):
    sequence = messages("webhooks_declined_on_one_device")
    # EARLY soft, EARLY mobile, TERMINATED mobile (REJECTED), CONFIRMED soft, TERMINATED soft (HANGUP)
    assert states_after_each(sequence) == ["ringing", "ringing", "ringing", "talking", "ended"]
    call = the_call(sequence)
    assert (call.end_cause, call.answered_at, call.talking_ms) == (u.END_HANGUP, at(sequence[3]), 150_000)


def test_it_never_counts_a_voicemail_taking_the_call_as_the_agent_answering(account, terminal, queued):
    sequence = messages("webhooks_voicemail")
    # EARLY soft, EARLY mobile, CONFIRMED voicemail, both devices ANSWERED_ELSEWHERE, TERMINATED voicemail (HANGUP)
    assert states_after_each(sequence) == ["ringing"] * 5 + ["ended"]
    call = the_call(sequence)
    assert (call.end_cause, call.answered_at, call.talking_ms) == (u.END_NO_ANSWER, None, 0)
    assert call.ended_at == at(sequence[5])  # the caller spoke to the voicemail until then


def test_it_ends_a_call_a_queue_took_as_transferred_not_answered(account, terminal, queued):
    sequence = messages("webhooks_queue")
    # EARLY desktop, CONFIRMED queue, TERMINATED desktop (ANSWERED_ELSEWHERE), TERMINATED queue (HANGUP)
    assert states_after_each(sequence) == ["ringing", "ringing", "ringing", "ended"]
    call = the_call(sequence)
    assert (call.end_cause, call.answered_at) == (u.END_TRANSFERRED, None)


def test_it_keeps_a_call_moved_to_another_device_talking_until_that_device_hangs_up(account, terminal, queued):
    sequence = messages("webhooks_moved")
    # EARLY + CONFIRMED soft; EARLY + CONFIRMED mobile (the move); TERMINATED soft, then mobile (HANGUP)
    assert states_after_each(sequence) == ["ringing", "talking", "talking", "talking", "talking", "ended"]
    call = the_call(sequence)
    assert (call.end_cause, call.answered_at, call.talking_ms) == (u.END_HANGUP, at(sequence[1]), 180_000)


ORDERS = sorted(set(itertools.islice(itertools.permutations(range(5)), 0, None, 11)) | {
    (0, 1, 2, 3, 4), (3, 0, 1, 2, 4), (0, 1, 3, 2, 4), (0, 3, 1, 2, 4), (4, 3, 2, 1, 0), (3, 4, 0, 1, 2),
})


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: "".join(map(str, o)))
def test_it_ends_a_call_answered_on_one_of_two_devices_right_whatever_order_its_messages_come_in(
    account, terminal, queued, order
):
    sequence = messages("webhooks_two_devices_answered")
    for index in order:
        post(sequence[index])
    call = the_call(sequence)
    assert (call.state, call.end_cause, call.answered_at is not None, call.last_seq) == (
        "ended", u.END_HANGUP, True, 5)


def test_it_leaves_an_answered_elsewhere_after_a_gap_to_the_snapshot(account, terminal, world, queued):
    # The softphone's ANSWERED_ELSEWHERE comes first: the mobile's messages before it are late or lost.
    sequence = messages("webhooks_two_devices_answered")
    post(sequence[3])
    call = the_call(sequence)
    assert (call.state, call.answered_at, call.ended_at) == ("ringing", None, None)
    assert queued == [("reconcile_user_task", (account.pk, ALICE))]  # the gap asks the snapshot
    # It does not list the call (another user answered it) once the grace for late messages is over.
    Call.objects.filter(pk=call.pk).update(updated_at=timezone.now() - ABSENCE_GRACE - timedelta(seconds=1))
    assert reconcile_user(account, ALICE).ended == 1
    call.refresh_from_db()
    assert (call.state, call.end_cause, call.answered_at) == ("ended", u.END_ANSWERED_ELSEWHERE, None)


# --- the snapshot ---------------------------------------------------------------------------------

def snapshot_listing(call_id: str, status: str) -> dict:
    return {"fullState": True, "calls": [{"stateToken": 99, "callId": call_id, "userId": ALICE, "inbound": True,
                                          "status": status, "deviceIds": [VOICEMAIL],
                                          "actions": [{"action": "TERMINATE"}]}]}


def test_it_takes_no_snapshot_active_for_an_answer_while_only_a_voicemail_has_the_call(
    account, terminal, world, queued, monkeypatch
):
    sequence = messages("webhooks_voicemail")
    for message in sequence[:5]:
        post(message)
    call_id = sequence[0]["call_id"]
    Call.objects.filter(pbx_call_id=call_id).update(updated_at=timezone.now() - timedelta(seconds=1))
    monkeypatch.setattr(world, "snapshot", lambda user_id: snapshot_listing(call_id, "ACTIVE"))
    assert reconcile_user(account, ALICE).applied == 1
    call = the_call(sequence)
    assert (call.state, call.answered_at, call.state_token, call.allowed_actions) == (
        "ringing", None, "99", [u.HANGUP])  # the snapshot's token and actions, not its "answered"


def test_it_ends_a_call_a_queue_took_as_transferred_when_the_snapshot_no_longer_lists_it(
    account, terminal, world, queued
):
    sequence = messages("webhooks_queue")
    for message in sequence[:3]:  # the queue's TERMINATED is lost
        post(message)
    Call.objects.update(updated_at=timezone.now() - ABSENCE_GRACE - timedelta(seconds=1))
    assert reconcile_user(account, ALICE).ended == 1
    call = the_call(sequence)
    assert (call.state, call.end_cause, call.answered_at) == ("ended", u.END_TRANSFERRED, None)


# --- the simulator's calls on several devices -----------------------------------------------------

@pytest.fixture
def devices(world):
    world.add_user(ALICE, DOMAIN, email="alice@organization.com", number="+12202",
                   devices={DEVICE: "SOFT", MOBILE: "MOBILE", VOICEMAIL: "VOICEMAIL"})
    return world


def post_sent(world, call_id: str, since: int = 0) -> int:
    sent = [m for m in world.sent if m["call_id"] == call_id]
    for message in sent[since:]:
        post(message)
    return len(sent)


def test_it_follows_a_simulated_call_answered_on_the_mobile_until_the_caller_hangs_up(
    account, terminal, devices, queued
):
    sim_call = devices.incoming_call(ALICE, "+33612345678", ring_devices=[DEVICE, MOBILE])
    devices.answer(sim_call.call_id, MOBILE)
    seen = post_sent(devices, sim_call.call_id)
    assert [(m["state"], m.get("termination-reason")) for m in devices.sent] == [
        ("EARLY", None), ("EARLY", None), ("CONFIRMED", None), ("TERMINATED", "ANSWERED_ELSEWHERE")]
    call = Call.objects.get(pbx_call_id=sim_call.call_id)
    assert (call.state, call.answered_at is not None) == ("talking", True)
    devices.hangup(sim_call.call_id)
    post_sent(devices, sim_call.call_id, seen)
    call.refresh_from_db()
    assert (call.state, call.end_cause) == ("ended", u.END_HANGUP)


def test_it_follows_a_simulated_call_declined_on_one_device_and_diverted_to_voicemail(
    account, terminal, devices, queued
):
    sim_call = devices.incoming_call(ALICE, "+33612345678", ring_devices=[DEVICE, MOBILE])
    devices.decline(sim_call.call_id, MOBILE)
    seen = post_sent(devices, sim_call.call_id)
    assert Call.objects.get(pbx_call_id=sim_call.call_id).state == "ringing"
    devices.divert(sim_call.call_id, VOICEMAIL)
    assert devices.snapshot(ALICE)["calls"][0]["status"] == "ACTIVE"  # the voicemail has it
    seen = post_sent(devices, sim_call.call_id, seen)
    reconcile_user(account, ALICE)
    call = Call.objects.get(pbx_call_id=sim_call.call_id)
    assert (call.state, call.answered_at) == ("ringing", None)
    devices.hangup(sim_call.call_id)
    post_sent(devices, sim_call.call_id, seen)
    call.refresh_from_db()
    assert (call.state, call.end_cause, call.answered_at) == ("ended", u.END_NO_ANSWER, None)
