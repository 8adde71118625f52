"""Telepo webhooks and snapshots into CallUpdates: the spec's samples and the cases around them."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from telephony import updates as u
from telephony.providers.telepo.frames import (
    forget_noted,
    implied_answer,
    parse_actions,
    parse_call_state,
    parse_snapshot,
    parse_webhook,
    parse_webhook_body,
    unknown_state,
)
from telephony.updates import FrameRejected

FIXTURES = Path(__file__).parent / "fixtures"
FETCHED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def webhook(**changes) -> dict:
    body = json.loads(fixture("webhook_terminated_rejected"))
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


# --- the webhook ----------------------------------------------------------------------------------

def test_it_reads_the_specs_sample_message_as_a_rejected_outgoing_call():
    update = parse_webhook_body(fixture("webhook_terminated_rejected"), 7)
    assert (update.account_id, update.pbx_call_id, update.seq, update.frame_id) == (
        7, "8Z7SCgOCRyCewZ6yHmDR3g", 5, "seq5:user2@test.org")
    assert (update.state, update.direction, update.end_cause) == (u.ENDED, u.OUTBOUND, u.END_REJECTED)
    assert update.occurred_at == datetime(2018, 2, 2, 12, 34, 57, 699000, tzinfo=UTC)
    assert (update.remote_number, update.remote_label, update.is_internal) == ("+12201", "user1@test.com", True)
    assert update.terminal_pbx_id == "user2@test.org"
    assert update.local_party == {"user_id": "user2@test.org", "email": "user2@test.com", "number": "+12202"}
    assert update.payload["branch_id"] == "2e7e5911"


@pytest.mark.parametrize(("state", "direction", "expected"), [
    ("TRYING", "INCOMING", u.RINGING),
    ("PROCEEDING", "INCOMING", u.RINGING),
    ("EARLY", "INCOMING", u.RINGING),
    ("TRYING", "OUTGOING", u.DIALING),
    ("EARLY", "OUTGOING", u.DIALING),
    ("CONFIRMED", "INCOMING", u.TALKING),
    ("CONFIRMED", "OUTGOING", u.TALKING),
    ("TERMINATED", "INCOMING", u.ENDED),
])
def test_it_maps_each_dialog_state(state, direction, expected):
    update = parse_webhook(webhook(state=state, direction=direction, **{"termination-reason": None}), 7)
    assert update.state == expected


def test_it_gives_a_live_call_the_usual_actions_and_forgets_its_old_state_token():
    ringing = parse_webhook(webhook(state="EARLY", direction="INCOMING", **{"termination-reason": None}), 7)
    assert ringing.allowed_actions == (u.ANSWER, u.REDIRECT, u.HANGUP)
    assert ringing.state_token == ""  # the token we held was for an older state
    assert parse_webhook(webhook(), 7).allowed_actions is None  # the domain clears an ended call's


@pytest.mark.parametrize(("reason", "direction", "end_cause"), [
    ("REJECTED", "INCOMING", u.END_REJECTED),
    ("ANSWERED_ELSEWHERE", "INCOMING", u.END_ANSWERED_ELSEWHERE),
    ("CANCELLED", "INCOMING", u.END_NO_ANSWER),  # the caller gave up: a missed call
    ("CANCELLED", "OUTGOING", u.END_CANCELLED),  # we gave up on our own call
    ("HANGUP", "INCOMING", None),  # the domain says hangup (answered) from answered_at
    (None, "INCOMING", None),
])
def test_it_maps_each_termination_reason(reason, direction, end_cause):
    assert parse_webhook(webhook(direction=direction, **{"termination-reason": reason}), 7).end_cause == end_cause


def test_it_implies_an_answer_only_from_a_hangup():
    hangup = parse_webhook(webhook(**{"termination-reason": "HANGUP"}), 7)
    answer = implied_answer(hangup)
    assert (answer.state, answer.seq, answer.frame_id, answer.occurred_at) == (
        u.TALKING, None, "seq5:user2@test.org:answered", hangup.occurred_at)
    assert implied_answer(parse_webhook(webhook(), 7)) is None  # REJECTED: never answered
    assert implied_answer(parse_webhook(webhook(state="CONFIRMED", **{"termination-reason": None}), 7)) is None


def test_it_reads_the_remote_user_id_under_the_spec_tables_spelling_too():
    update = parse_webhook(webhook(remote_user_id=None, remote_use_id="bob@test.org", remote_email=None), 7)
    assert (update.is_internal, update.remote_label) == (True, "bob@test.org")


def test_it_reads_an_external_caller_as_not_internal():
    update = parse_webhook(webhook(remote_user_id="", remote_email="", remote_number="+33612345678"), 7)
    assert (update.is_internal, update.remote_number, update.remote_label) == (False, "+33612345678", None)


def test_it_accepts_a_seq_num_sent_as_a_string_of_digits():
    assert parse_webhook(webhook(seq_num="12"), 7).seq == 12


@pytest.mark.parametrize(("body", "reason"), [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps(webhook(seq_num=None)), "seq_num"),
    (json.dumps(webhook(seq_num=-1)), "seq_num"),
    (json.dumps(webhook(seq_num=True)), "seq_num"),
    (json.dumps(webhook(seq_num=2**63)), "seq_num"),  # past what the call's last_seq column holds
    (json.dumps(webhook(seq_num=1.5)), "seq_num"),
    (json.dumps(webhook(call_id="")), "call_id"),
])
def test_it_rejects_a_malformed_message_saying_why(body, reason):
    with pytest.raises(FrameRejected, match=reason):
        parse_webhook_body(body, 7)


@pytest.mark.parametrize("value", [2**63 - 1, str(2**63 - 1), 10**18, 12.0])
def test_it_accepts_every_seq_num_the_database_holds(value):
    assert parse_webhook(webhook(seq_num=value), 7).seq == int(value)


SPEC_TIME = datetime(2018, 2, 2, 12, 34, 57, 699000, tzinfo=UTC)


@pytest.mark.parametrize("timestamp", [
    "2018-02-02T12:34:57.699+0000",  # the spec's own
    "2018-02-02T12:34:57.699Z",
    "2018-02-02T12:34:57.699+00:00",
    "2018-02-02T14:34:57.699+02:00",
    "2018-02-02T11:34:57.699-0100",
    "2018-02-02T12:34:57.699",  # no offset: the spec says UTC
    "2018-02-02 12:34:57.699",
    "2018-02-02T12:34:57.699000000+0000",  # nanoseconds
    1517574897699,  # epoch milliseconds
    "1517574897699",
    1517574897.699,  # epoch seconds
])
def test_it_reads_the_timestamps_a_telepo_may_write_for_the_specs_one(timestamp):
    assert parse_webhook(webhook(timestamp=timestamp), 7).occurred_at == SPEC_TIME


@pytest.mark.parametrize("timestamp", ["yesterday", None, "2018-02-30T12:00:00Z", "2018-02-02T12:34:57+9900", [1]])
def test_it_dates_a_message_whose_time_it_cannot_read_when_it_came_and_says_so_once(timestamp, caplog):
    # seq_num orders a call's messages, not their time: losing a TERMINATED for its time would leave the call
    # ringing until the snapshot check.
    forget_noted()
    before = datetime.now(UTC)
    with caplog.at_level("WARNING"):
        update = parse_webhook_body(json.dumps(webhook(timestamp=timestamp)), 7)
        parse_webhook_body(json.dumps(webhook(timestamp=timestamp)), 7)
    assert (update.state, update.seq) == (u.ENDED, webhook()["seq_num"])
    assert before <= update.occurred_at <= datetime.now(UTC)
    (record,) = [r for r in caplog.records if "timestamp" in r.getMessage()]
    assert record.account_id == 7


def test_it_reads_nan_and_infinity_as_null_so_the_message_can_be_stored():
    # Python's JSON reader takes them; PostgreSQL's jsonb refuses them, and the message was lost with a 500.
    # json.dumps writes them as the bare NaN and Infinity such a sender would.
    update = parse_webhook_body(json.dumps(webhook(remote_email=float("nan"), duration=float("inf"))), 7)
    assert update.payload["remote_email"] is None and update.payload["duration"] is None
    assert update.state == u.ENDED


# --- the snapshot -----------------------------------------------------------------------------------

def test_it_reads_the_specs_snapshot_sample_as_a_held_outgoing_internal_call():
    (update,) = parse_snapshot(json.loads(fixture("snapshot")), 7, "alice@organization.org", FETCHED).updates
    assert (update.pbx_call_id, update.terminal_pbx_id, update.kind) == ("aaa111bbb", "alice@organization.org",
                                                                         "snapshot")
    assert (update.state, update.direction, update.is_internal) == (u.HELD, u.OUTBOUND, True)
    assert (update.remote_number, update.remote_number_e164, update.remote_label) == (
        "+46277464", "+46277464", "Bob Bobson")
    assert update.allowed_actions == (u.MOVE, u.TRANSFER, u.REDIRECT, u.RESUME, u.PARK)
    assert (update.state_token, update.frame_id, update.seq, update.occurred_at) == (
        "487345453", f"token487345453@{FETCHED.isoformat()}", None, FETCHED)


def test_it_reads_the_specs_action_answer_with_its_flattened_actions_and_device_ids():
    update = parse_call_state(json.loads(fixture("transfer_answer")), 7, "user@organization.org", FETCHED)
    assert (update.state, update.direction, update.allowed_actions) == (u.RINGING, u.INBOUND, (u.ANSWER,))
    assert update.remote_label == "Nathan Hughes"


@pytest.mark.parametrize(("status", "inbound", "state"), [
    ("RINGING", True, u.RINGING), ("ALERTING", False, u.DIALING), ("ACTIVE", True, u.TALKING),
    ("HELD", True, u.HELD), ("PARKED", False, u.HELD),
])
def test_it_maps_each_snapshot_status(status, inbound, state):
    call = {"callId": "c1", "status": status, "inbound": inbound, "stateToken": 1}
    assert parse_call_state(call, 7, "alice", FETCHED).state == state


def test_it_keeps_a_64_bit_state_token_exact():
    call = {"callId": "c1", "status": "ACTIVE", "stateToken": 9223372036854775807}
    assert parse_call_state(call, 7, "alice", FETCHED).state_token == "9223372036854775807"


def test_it_reads_an_unknown_action_name_as_nothing_allowed():
    assert parse_actions([{"action": "TELEPORT"}, {"action": "TERMINATE"}]) == (u.HANGUP,)
    assert parse_actions(None) == ()


@pytest.mark.parametrize("body", [[], {"calls": "none"}])
def test_it_rejects_a_snapshot_that_makes_no_sense(body):
    with pytest.raises(FrameRejected):
        parse_snapshot(body, 7, "alice", FETCHED)


# --- the number dialled (issue 14, point 6) ----------------------------------------------------------

def test_it_takes_an_incoming_calls_dialled_number_from_the_webhooks_local_number():
    assert parse_webhook(webhook(direction="INCOMING", remote_user_id=None), 7).external_phone == "+12202"
    assert parse_webhook(webhook(direction="INCOMING"), 7).external_phone is None  # internal: no shop
    assert parse_webhook(webhook(remote_user_id=None), 7).external_phone is None  # outgoing: the click-to-call's
    assert parse_webhook(webhook(direction="INCOMING", remote_user_id=None, local_number=""), 7).external_phone is None


def test_it_takes_the_number_first_dialled_from_a_snapshots_history_info():
    state = json.loads(fixture("transfer_answer"))
    # The spec's sample names the caller as the initial party too: that says nothing about what was dialled.
    assert parse_call_state(state, 7, "user@organization.org", FETCHED).external_phone is None
    state["historyInfo"]["initialParty"].update(telUri="tel:+74999999999", type="TEL_URI")
    assert parse_call_state(state, 7, "user@organization.org", FETCHED).external_phone == "+74999999999"
    assert parse_call_state({**state, "inbound": False}, 7, "user@organization.org", FETCHED).external_phone is None
    del state["historyInfo"]
    assert parse_call_state(state, 7, "user@organization.org", FETCHED).external_phone is None


# --- what the spec does not list (issue 14, point 1) ---------------------------------------------------

@pytest.fixture(autouse=True)
def _log_every_unknown_value_again():
    forget_noted()
    yield
    forget_noted()


def webhooks(name: str) -> list[dict]:
    return json.loads(fixture(name))


def test_it_keeps_a_webhook_whose_state_it_does_not_know_with_all_else_it_says():
    referred = webhooks("webhooks_unknown_state")[2]
    update = parse_webhook(referred, 7)
    assert unknown_state(update) and update.payload["state"] == "REFERRED"  # kept as given, in the event
    assert (update.state, update.seq, update.frame_id, update.remote_number) == (
        u.RINGING, 3, "seq3:alice@organization.org", "+33612345678")  # a stand-in: branches.settle gives it the call's own state
    assert update.terminal_pbx_id == "alice@organization.org" and update.end_cause is None


@pytest.mark.parametrize(("changes", "expected"), [
    ({"termination-reason": "BORED"}, (u.ENDED, u.OUTBOUND, None)),  # the domain's hangup or no_answer
    ({"direction": "SIDEWAYS", "state": "EARLY", "termination-reason": None}, (u.RINGING, None, None)),
    ({"device_type": "HOLOGRAM"}, (u.ENDED, u.OUTBOUND, u.END_REJECTED)),
])
def test_it_reads_an_unknown_reason_direction_or_device_as_not_said(changes, expected):
    update = parse_webhook(webhook(**changes), 7)
    assert (update.state, update.direction, update.end_cause) == expected
    assert not unknown_state(update)


def test_it_logs_each_unknown_value_once_per_account_not_once_per_message(caplog):
    with caplog.at_level(logging.WARNING, logger="telephony.providers.telepo.frames"):
        for account_id in (7, 7, 7, 8):
            parse_webhook(webhook(state="REFERRED"), account_id)
        parse_webhook(webhook(state="PARKED"), 7)
    logged = [(r.account_id, r.getMessage()) for r in caplog.records]
    assert logged == [
        (7, "Telepo sent an unknown webhook state 'REFERRED': kept as given, the rest applies"),
        (8, "Telepo sent an unknown webhook state 'REFERRED': kept as given, the rest applies"),
        (7, "Telepo sent an unknown webhook state 'PARKED': kept as given, the rest applies"),
    ]


def test_it_reads_every_other_call_of_a_snapshot_with_a_status_it_does_not_know(caplog):
    with caplog.at_level(logging.WARNING, logger="telephony.providers.telepo.frames"):
        for _ in range(3):
            parsed = parse_snapshot(json.loads(fixture("snapshot_unknown_status")), 7, "alice", FETCHED)
    queued, active = parsed.updates
    assert (active.pbx_call_id, active.state, active.remote_label) == ("c-active", u.TALKING, "Carol")
    assert (queued.pbx_call_id, queued.state, queued.payload["status"]) == ("c-queued", u.RINGING, "QUEUED")
    assert unknown_state(queued) and not unknown_state(active)
    assert (queued.state_token, queued.allowed_actions) == ("487345460", (u.PICKUP, u.HANGUP))
    assert (parsed.listed, parsed.skipped) == ({"c-queued", "c-active"}, [])
    assert [r.getMessage() for r in caplog.records] == [
        "Telepo sent an unknown snapshot status 'QUEUED': kept as given, the rest applies"]


@pytest.mark.parametrize(("call", "unnamed"), [
    ({"status": "ACTIVE"}, True),
    ("not a call", True),
    ({"callId": "c-bad", "status": "ACTIVE", "userId": "x" * 300}, False),
])
def test_it_skips_a_snapshot_call_it_cannot_read_and_reads_the_others(call, unnamed):
    body = {"calls": [call, {"callId": "c2", "status": "ACTIVE", "inbound": True}]}
    parsed = parse_snapshot(body, 7, "alice", FETCHED)
    assert [x.pbx_call_id for x in parsed.updates] == ["c2"]
    assert len(parsed.skipped) == 1 and parsed.unnamed_skipped is unnamed
    assert parsed.listed == ({"c2"} if unnamed else {"c-bad", "c2"})
