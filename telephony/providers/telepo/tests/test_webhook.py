"""The CRM connector webhook: who may post, what a malformed body gets, and sequences in every order.

Messages are the simulator's own (a simulated Telepo call), posted to the view
in the order each test wants: in order, duplicated, shuffled, or with one lost.
"""

from __future__ import annotations

import itertools
import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from telephony import updates as u
from telephony.models import Call, CallEvent, PbxAccount
from telephony.providers.telepo import views
from telephony.providers.telepo.frames import parse_webhook
from telephony.providers.telepo.reconcile import ABSENCE_GRACE, reconcile_user
from telephony.providers.telepo.tests.conftest import ALICE, SECRET
from tests.factories import make_account, make_agent, make_terminal

pytestmark = pytest.mark.django_db
FIXTURES = Path(__file__).parent / "fixtures"
URL = f"/api/telepo/webhook/{SECRET}"


def post(body, url: str = URL):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return Client().post(url, data=data, content_type="application/json")


def sample() -> dict:
    return json.loads((FIXTURES / "webhook_terminated_rejected.json").read_text())


def answered_call(world, hang_up: bool = True) -> tuple[str, list[dict]]:
    """An incoming call Alice answers, then (optionally) the caller hangs up: its webhook messages."""
    call = world.incoming_call(ALICE, "+33612345678", display_name="Bob")
    world.answer(call.call_id)
    if hang_up:
        world.hangup(call.call_id)
    return call.call_id, [m for m in world.sent if m["call_id"] == call.call_id]


def the_call(account, call_id: str) -> Call:
    return Call.objects.get(account=account, pbx_call_id=call_id)


def events_of(call: Call) -> list[int]:
    return [e.payload.get("seq_num") for e in call.events.order_by("id")]


# --- who may post --------------------------------------------------------------------------------

def test_it_stores_the_specs_sample_for_the_account_of_the_secret(account, agent):
    make_terminal(account, pbx_id="user2@test.org", agent=agent)
    response = post(sample())
    assert (response.status_code, response.json()) == (200, {"ok": True, "applied": True})
    call = the_call(account, "8Z7SCgOCRyCewZ6yHmDR3g")
    assert (call.state, call.direction, call.end_cause, call.last_seq) == ("ended", "out", u.END_REJECTED, 5)
    assert (call.agent, call.remote_number_raw, call.answered_at) == (agent, "+12201", None)
    account.refresh_from_db()
    assert account.last_event_at is not None and account.status == PbxAccount.Status.CONNECTED


def test_it_maps_the_local_party_to_an_agent_by_email_when_no_user_id_matches(account):
    agent = make_agent("user2")
    agent.user.email = "user2@test.com"
    agent.user.save()
    post(sample())
    assert the_call(account, "8Z7SCgOCRyCewZ6yHmDR3g").agent == agent


def test_it_maps_the_local_party_to_an_agent_by_number(account):
    agent = make_agent()
    make_terminal(account, pbx_id="someone-else@test.org", extension="+12202", agent=agent)
    post(sample())
    assert the_call(account, "8Z7SCgOCRyCewZ6yHmDR3g").agent == agent


def test_it_answers_404_to_an_unknown_secret_and_touches_nothing(account):
    response = post(sample(), url="/api/telepo/webhook/not-the-secret")
    assert (response.status_code, response.json()) == (404, {"error": "unknown webhook"})
    assert not Call.objects.exists()


def test_it_never_takes_an_empty_secret_as_a_match(db):
    make_account(kind=PbxAccount.Kind.TELEPO, base_url="https://telepo.example.com", webhook_secret="")
    assert post(sample(), url="/api/telepo/webhook/%20").status_code == 404


def test_it_tells_the_secrets_of_two_accounts_apart(account, db):
    other = make_account(kind=PbxAccount.Kind.TELEPO, base_url="https://telepo.example.com",
                         webhook_secret="another-secret")
    post(sample(), url="/api/telepo/webhook/another-secret")
    assert list(Call.objects.values_list("account_id", flat=True)) == [other.pk]


def test_it_answers_403_for_a_disabled_account(account):
    PbxAccount.objects.filter(pk=account.pk).update(enabled=False)
    assert post(sample()).status_code == 403
    assert not Call.objects.exists()


def test_it_only_takes_posts(account):
    assert Client().get(URL).status_code == 405


@pytest.mark.parametrize(("body", "reason"), [
    ("{not json", "the body is not JSON"),
    ("[]", "the body is not a JSON object"),
    ({**sample(), "call_id": ""}, "call_id is missing"),
    ({k: v for k, v in sample().items() if k != "seq_num"}, "seq_num must be a non-negative integer"),
])
def test_it_answers_400_with_the_reason_logs_it_with_the_account_and_touches_nothing(account, caplog, body, reason):
    with caplog.at_level(logging.WARNING, logger="telephony.providers.telepo.views"):
        response = post(body)
    assert response.status_code == 400 and response.json()["error"].startswith(reason)
    (record,) = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert record.account_id == account.pk and reason in record.getMessage()
    account.refresh_from_db()
    assert not Call.objects.exists() and account.last_event_at is None


@pytest.mark.parametrize("bobs_first_seq", [4, 1], ids=["sequence-goes-on", "sequence-starts-again"])
def test_it_gives_the_user_a_blind_transfer_reaches_a_call_and_a_card_of_their_own(account, terminal, bobs_first_seq):
    # Telepo keeps the call_id when a call is transferred and reports the new user's states under it. Once the
    # first user's leg had ended, the second user's were merged into an ended call and dropped: the agent the
    # call was transferred to got no card and no pop-up, and their answer was never recorded.
    bob = make_terminal(account, pbx_id="bob@organization.org", extension="bob-soft", agent=make_agent("bob"))
    now = timezone.now()

    def message(seq, state, user, **fields):
        stamp = (now + timedelta(seconds=seq if user == ALICE else 10 + seq)).strftime("%Y-%m-%dT%H:%M:%S.%f")
        return {"seq_num": seq, "call_id": "xfer-1", "branch_id": f"branch-{user}", "timestamp": stamp[:-3] + "+0000",
                "state": state, "direction": "INCOMING", "local_user_id": user, "local_email": "",
                "local_number": "+12202", "device_type": "SOFT", "remote_email": "", "remote_user_id": "",
                "remote_number": "+33612345678", **fields}

    for body in (message(1, "EARLY", ALICE), message(2, "CONFIRMED", ALICE),
                 message(3, "TERMINATED", ALICE, **{"termination-reason": "HANGUP"})):
        assert post(body).status_code == 200
    first = bobs_first_seq
    # Another user's message for the ended call that is not a leg setting up: old news there too (the view
    # leaves it to the domain, which neither revives the call nor gives it to that user).
    stray = message(2, "TERMINATED", bob.pbx_id, **{"termination-reason": "HANGUP"})
    assert post(stray).json() == {"ok": True, "applied": False}
    assert Call.objects.get(account=account).terminal == terminal
    assert post(message(first, "EARLY", bob.pbx_id)).json() == {"ok": True, "applied": True}
    alices, bobs = Call.objects.get(terminal=terminal), Call.objects.get(terminal=bob)
    assert (alices.state, alices.answered_at is not None, alices.pbx_call_id) == ("ended", True, f"xfer-1#{alices.pk}")
    assert (bobs.state, bobs.agent, bobs.pbx_call_id, bobs.remote_number_e164) == (
        "ringing", bob.agent, "xfer-1", "+33612345678")
    assert post(message(first + 1, "CONFIRMED", bob.pbx_id)).json()["applied"] is True
    assert post(message(first + 2, "TERMINATED", bob.pbx_id, **{"termination-reason": "HANGUP"})).json()["applied"]
    bobs.refresh_from_db()
    assert (bobs.state, bobs.answered_at is not None, bobs.end_cause) == ("ended", True, u.END_HANGUP)
    assert post(message(2, "CONFIRMED", ALICE)).json()["applied"] is False  # Alice's replay changes nothing
    assert Call.objects.filter(account=account).count() == 2


def test_it_refuses_a_huge_body(account):
    assert post({**sample(), "padding": "x" * 70_000}).status_code == 400


def test_it_stores_a_message_with_nan_in_it_and_its_time_written_another_way(account, agent):
    # On PostgreSQL (the suite's database) a NaN reached jsonb and the message was lost with a 500; a time
    # without offset, with a space, was a 400 and the message lost too.
    make_terminal(account, pbx_id="user2@test.org", agent=agent)
    # json.dumps writes the float as the bare NaN such a sender would.
    body = json.dumps({**sample(), "timestamp": "2018-02-02 12:34:57.699", "remote_email": float("nan")})
    response = post(body)
    assert (response.status_code, response.json()) == (200, {"ok": True, "applied": True})
    call = the_call(account, "8Z7SCgOCRyCewZ6yHmDR3g")
    assert (call.state, call.ended_at.isoformat()) == ("ended", "2018-02-02T12:34:57.699000+00:00")
    assert call.events.get().payload["remote_email"] is None


# --- sequences -----------------------------------------------------------------------------------

def test_it_follows_a_call_delivered_in_order(account, terminal, world, queued):
    call_id, messages = answered_call(world)
    assert [m["state"] for m in messages] == ["EARLY", "CONFIRMED", "TERMINATED"]
    states = []
    for message in messages:
        assert post(message).json()["applied"] is True
        states.append(the_call(account, call_id).state)
    assert states == ["ringing", "talking", "ended"]
    call = the_call(account, call_id)
    assert (call.agent, call.terminal, call.end_cause, call.remote_label) == (
        terminal.agent, terminal, u.END_HANGUP, "")
    assert call.answered_at is not None and events_of(call) == [1, 2, 3]


def test_it_ignores_a_duplicated_message(account, terminal, world, queued):
    call_id, messages = answered_call(world)
    answers = [post(message).json()["applied"] for message in messages for _ in range(2)]
    assert answers == [True, False, True, False, True, False]
    call = the_call(account, call_id)
    assert (call.state, call.end_cause, call.version) == ("ended", u.END_HANGUP, 3)
    assert events_of(call) == [1, 2, 3]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))), ids=lambda o: "".join(map(str, o)))
def test_it_ends_an_answered_call_right_whatever_order_its_messages_come_in(account, terminal, world, queued, order):
    call_id, messages = answered_call(world)
    for index in order:
        assert post(messages[index]).status_code == 200
    call = the_call(account, call_id)
    assert (call.state, call.end_cause, call.last_seq) == ("ended", u.END_HANGUP, 3)
    assert call.answered_at is not None  # even when the CONFIRMED came after the end


def test_it_ends_an_answered_call_right_when_its_confirmed_is_lost(account, terminal, world, queued):
    call_id, messages = answered_call(world)
    post(messages[0])
    post(messages[2])
    call = the_call(account, call_id)
    assert (call.state, call.end_cause, call.answered_at) == ("ended", u.END_HANGUP, call.ended_at)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_it_never_undoes_a_rejection_with_a_late_early(account, terminal, world, queued, order):
    call = world.incoming_call(ALICE, "+33612345678")
    world.act(world.user(ALICE), "terminate", call.call_id, {})
    messages = world.sent
    for index in order:
        post(messages[index])
    stored = the_call(account, call.call_id)
    assert (stored.state, stored.end_cause, stored.answered_at) == ("ended", u.END_REJECTED, None)


def test_it_ends_a_call_whose_terminated_was_lost_once_the_snapshot_says_so(account, terminal, world, queued):
    call_id, messages = answered_call(world)
    for message in messages[:2]:  # the TERMINATED never arrives
        post(message)
    assert the_call(account, call_id).state == "talking"
    # Past the grace a late TERMINATED gets (reconcile.ABSENCE_GRACE).
    Call.objects.filter(pbx_call_id=call_id).update(updated_at=timezone.now() - ABSENCE_GRACE - timedelta(seconds=1))

    report = reconcile_user(account, ALICE)

    call = the_call(account, call_id)
    assert (report.ended, call.state, call.end_cause) == (1, "ended", u.END_HANGUP)
    post(messages[2])  # it turns up after all: the call stays as the snapshot ended it
    late = the_call(account, call_id)
    assert (late.state, late.end_cause, late.ended_at, late.answered_at) == (
        "ended", u.END_HANGUP, call.ended_at, call.answered_at)


# --- asking the snapshot -------------------------------------------------------------------------

def test_it_asks_for_one_snapshot_of_the_user_after_a_burst_and_none_for_a_duplicate(account, terminal, world, queued):
    _, messages = answered_call(world, hang_up=False)
    post(messages[0])
    post(messages[0])
    post(messages[1])
    assert queued == [("reconcile_user_task", (account.pk, ALICE))]


def test_it_asks_for_no_snapshot_after_an_end_that_follows_in_sequence(account, terminal, world, queued):
    call_id, messages = answered_call(world)
    Call.objects.create(account=account, pbx_call_id=call_id, terminal=terminal, direction="in", state="talking",
                        last_seq=2)  # the EARLY and the CONFIRMED came long ago
    assert post(messages[2]).json()["applied"] is True
    assert queued == []


def test_it_asks_for_a_snapshot_after_a_gap_even_for_an_end(account, terminal, world, queued):
    call_id, messages = answered_call(world)
    post(messages[2])  # seq 3 first: 1 and 2 are missing
    assert queued == [("reconcile_user_task", (account.pk, ALICE))]


@pytest.mark.parametrize(("last_seq", "seq", "gap"), [(None, 1, False), (None, 3, True), (1, 2, False),
                                                      (1, 3, True), (3, 2, False)])
def test_it_tells_a_gap_in_the_sequence(account, last_seq, seq, gap):
    assert views._is_gap(last_seq, seq) is gap


def test_it_stores_nothing_twice_even_when_the_pbx_resends_everything(account, terminal, world, queued):
    call_id, messages = answered_call(world)
    for message in messages + messages[::-1]:
        post(message)
    assert CallEvent.objects.filter(call__pbx_call_id=call_id).count() == 3


def test_it_takes_a_replay_stamped_a_day_after_the_call_for_old_news_not_a_new_call(account, terminal, world, queued):
    call_id, messages = answered_call(world)
    for message in messages:
        post(message)
    a_day_ago = timezone.now() - timedelta(days=1)
    Call.objects.filter(pbx_call_id=call_id).update(created_at=a_day_ago, answered_at=a_day_ago, ended_at=a_day_ago)
    before = the_call(account, call_id)
    queued.clear()
    for message in messages[::-1] + messages:  # resent with the time of the resend
        answer = post({**message, "timestamp": timezone.now().strftime("%Y-%m-%dT%H:%M:%S.000+0000")})
        assert answer.status_code == 200 and answer.json()["applied"] is False
    assert list(Call.objects.values_list("pk", "pbx_call_id", "version")) == [(before.pk, call_id, before.version)]
    assert CallEvent.objects.count() == 3 and queued == []


def test_it_records_the_implied_answer_once_when_the_end_comes_first(account, terminal, world, queued):
    call_id, messages = answered_call(world)
    for message in messages[::-1] + messages:
        post(message)
    kinds = list(CallEvent.objects.filter(call__pbx_call_id=call_id).order_by("id").values_list("payload__state",
                                                                                                 flat=True))
    assert kinds == ["TERMINATED", "TERMINATED"]  # the implied answer (from the hangup), then the end itself


# --- an answer learnt after the end ----------------------------------------------------------------

def ended_by_the_snapshot_before_its_answer_came(account, world, hang_up_reason: str | None = "HANGUP"):
    """An answered call whose TRYING alone got in before Telepo's snapshot stopped listing it.

    Telepo's webhooks lag behind its snapshot by more than the grace (a busy PBX, or ours): the
    snapshot's absence ends the call with nothing that says it was answered. Returns the call id
    and its CONFIRMED and TERMINATED, still on the way.
    """
    call_id, messages = answered_call(world)
    if hang_up_reason is None:  # a TERMINATED that does not say why (the spec does not promise one)
        messages[2] = {k: v for k, v in messages[2].items() if k != "termination-reason"}
    post(messages[0])
    Call.objects.filter(pbx_call_id=call_id).update(updated_at=timezone.now() - ABSENCE_GRACE - timedelta(seconds=1))
    assert reconcile_user(account, ALICE).ended == 1
    missed = the_call(account, call_id)
    assert (missed.state, missed.end_cause, missed.answered_at) == ("ended", u.END_NO_ANSWER, None)
    return call_id, messages[1], messages[2]


@pytest.mark.parametrize("late", ["confirmed-first", "terminated-first"])
def test_it_records_an_answer_that_arrives_after_the_snapshot_ended_the_call_as_missed(
    account, terminal, world, queued, late
):
    call_id, confirmed, terminated = ended_by_the_snapshot_before_its_answer_came(account, world)
    order = [confirmed, terminated] if late == "confirmed-first" else [terminated, confirmed]
    for message in order + order:  # each delivered twice
        assert post(message).status_code == 200
    call = the_call(account, call_id)
    assert (call.state, call.end_cause, call.last_seq) == ("ended", u.END_HANGUP, 3)
    assert call.answered_at is not None and call.answered_at <= call.ended_at
    assert call.talking_ms == int((call.ended_at - call.answered_at).total_seconds() * 1000)
    assert call.ringing_ms == int((call.answered_at - call.created_at).total_seconds() * 1000)


def test_it_takes_a_lower_seq_confirmed_after_an_end_that_does_not_say_why_for_the_answer(
    account, terminal, world, queued
):
    call_id, messages = answered_call(world)
    messages[2] = {k: v for k, v in messages[2].items() if k != "termination-reason"}
    for message in (messages[0], messages[2], messages[1], messages[1]):  # the CONFIRMED last (and twice)
        assert post(message).status_code == 200
    call = the_call(account, call_id)
    assert (call.state, call.end_cause, call.last_seq) == ("ended", u.END_HANGUP, 3)
    assert call.answered_at == parse_webhook(messages[1], account.pk).occurred_at
    assert events_of(call) == [1, 3, 2]  # each message stored once
    version = call.version
    assert post(messages[1]).json()["applied"] is False  # old news now that the answer is known
    assert the_call(account, call_id).version == version


def test_it_records_a_late_answer_after_a_snapshot_end_and_an_end_that_does_not_say_why(
    account, terminal, world, queued
):
    call_id, confirmed, terminated = ended_by_the_snapshot_before_its_answer_came(account, world, None)
    post(terminated)
    post(confirmed)
    call = the_call(account, call_id)
    assert (call.state, call.end_cause, call.last_seq) == ("ended", u.END_HANGUP, 3)
    assert call.answered_at is not None


def test_it_keeps_a_voicemails_late_confirmed_from_answering_a_missed_call(account, terminal, world, queued):
    call_id, messages = answered_call(world)
    voicemail = {**messages[1], "device_type": "VOICEMAIL"}
    unsaid = {k: v for k, v in messages[2].items() if k != "termination-reason"}
    for message in (messages[0], unsaid, voicemail):
        post(message)
    call = the_call(account, call_id)
    assert (call.state, call.end_cause, call.answered_at) == ("ended", u.END_NO_ANSWER, None)
