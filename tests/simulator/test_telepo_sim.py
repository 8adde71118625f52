"""The simulated Telepo, exercised over real HTTP like a real client: tickets, actions, tokens, snapshot, webhooks."""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.telepo_sim import DOMAIN, TelepoControl, WebhookReceiver

ALICE = "alice@organization.org"
DEVICE = "10.3rd_party_phone"
CONTROL = "/api/call/control/v1"
SPEC_SNAPSHOT_KEYS = {"stateToken", "callId", "userId", "remoteParty", "conference", "inbound", "status",
                      "duration", "deviceIds", "actions"}
SPEC_WEBHOOK_KEYS = {"seq_num", "call_id", "branch_id", "timestamp", "state", "direction", "local_email",
                     "local_user_id", "local_number", "device_type", "remote_email", "remote_user_id",
                     "remote_number"}


@pytest.fixture
def receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def telepo(running_simulator, receiver):
    control = TelepoControl(running_simulator.url)
    control.reset()
    control.add_ticket()
    control.add_user(ALICE, email="alice@organization.com", number="+12202",
                     devices={DEVICE: "SOFT", "+1555555": "MOBILE"})
    control.set_webhook_url(receiver.url)
    yield control
    control.reset()


def snapshot(telepo, user=ALICE):
    response = telepo.api("GET", f"/api/call/state/v1/snapshot/{DOMAIN}/{user}")
    assert response.status_code == 200, response.text
    return response.json()


def act(telepo, action, call_id, body=None, user=ALICE):
    return telepo.act(user, action, call_id, body)


def actions_of(state) -> list[str]:
    return [a["action"] for a in state["actions"]]


def talking(telepo, caller="+33612345678") -> dict:
    call = telepo.incoming(ALICE, caller, displayName="Bob")
    return telepo.answer(call["callId"])


# --- the bearer ticket ---------------------------------------------------------------------------

@pytest.mark.parametrize(("ticket", "status", "code"), [
    (None, 401, "UNAUTHORIZED"),
    ("not-a-ticket", 401, "UNAUTHORIZED"),
    ("other-domain-ticket", 403, "FORBIDDEN"),
    ("no-scope-ticket", 403, "FORBIDDEN"),
])
def test_it_refuses_a_missing_unknown_or_foreign_ticket(telepo, ticket, status, code):
    telepo.add_ticket("other-domain-ticket", domain="elsewhere.org")
    telepo.add_ticket("no-scope-ticket", scopes=["PRESENCE"])
    response = telepo.api("GET", f"/api/call/state/v1/snapshot/{DOMAIN}/{ALICE}", ticket=ticket)
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert response.json()["message"]


def test_it_refuses_a_user_without_the_cloud_cti_licence_and_an_unknown_user(telepo):
    telepo.add_user("bob@organization.org", ctiLicence=False)
    assert telepo.api("GET", f"/api/call/state/v1/snapshot/{DOMAIN}/bob@organization.org").status_code == 403
    assert telepo.api("GET", f"/api/call/state/v1/snapshot/{DOMAIN}/nobody@organization.org").status_code == 404


# --- snapshot and make ------------------------------------------------------------------------------

def test_it_answers_a_snapshot_shaped_like_the_spec(telepo):
    call = telepo.incoming(ALICE, "+46277464", displayName="Bob Bobson")
    state = snapshot(telepo)
    assert state["fullState"] is True
    (only,) = state["calls"]
    assert SPEC_SNAPSHOT_KEYS <= set(only)
    assert (only["callId"], only["userId"], only["status"], only["inbound"]) == (call["callId"], ALICE, "RINGING", True)
    assert only["remoteParty"]["telUri"] == "tel:+46277464" and only["remoteParty"]["displayName"] == "Bob Bobson"
    assert isinstance(only["stateToken"], int)
    assert actions_of(only) == ["ANSWER", "PICKUP", "SINGLE_STEP_TRANSFER", "TERMINATE"]


def test_it_leaves_ended_calls_out_of_the_snapshot(telepo):
    call = telepo.incoming(ALICE, "+46277464")
    telepo.hangup(call["callId"])
    assert snapshot(telepo)["calls"] == []


def test_it_makes_a_call_from_a_device_to_a_tel_uri(telepo, receiver):
    response = telepo.api("POST", f"{CONTROL}/make/{DOMAIN}/{ALICE}/{DEVICE}", {"destination": "tel:+33612345678"})
    assert response.status_code == 200, response.text
    call = response.json()
    assert (call["status"], call["inbound"], call["deviceIds"]) == ("ALERTING", False, [DEVICE])
    assert [(m["seq_num"], m["state"], m["direction"]) for m in receiver.wait_for(2)] == [
        (1, "TRYING", "OUTGOING"), (2, "EARLY", "OUTGOING")]


@pytest.mark.parametrize(("device", "destination", "status"), [
    (DEVICE, "+33612345678", 400),  # not a URI
    (DEVICE, "tel:0612345678", 400),  # a local tel URI needs a phone-context
    ("no-such-device", "tel:+33612345678", 404),
])
def test_it_refuses_a_make_call_it_cannot_place(telepo, device, destination, status):
    response = telepo.api("POST", f"{CONTROL}/make/{DOMAIN}/{ALICE}/{device}", {"destination": destination})
    assert response.status_code == status


# --- actions --------------------------------------------------------------------------------------

def ringing(telepo):
    return telepo.incoming(ALICE, "+33612345678")


def held(telepo):
    call = talking(telepo)
    return act(telepo, "hold", call["callId"]).json()


def parked(telepo):
    call = talking(telepo)
    return act(telepo, "park", call["callId"]).json()


def muted(telepo):
    call = talking(telepo)
    return act(telepo, "mute", call["callId"]).json()


def conference(telepo):
    first, second = talking(telepo), talking(telepo, "+33622222222")
    return act(telepo, "conferenceadd", second["callId"], {"targetCallId": first["callId"]}).json()


ACTION_CASES = [
    # path action, how to get a call where it is allowed, body, what the call looks like after
    ("answer", ringing, {"deviceId": "+1555555"}, {"status": "ACTIVE", "deviceIds": ["+1555555"]}),
    ("pickup", parked, {}, {"status": "ACTIVE"}),
    ("hold", talking, {}, {"status": "HELD"}),
    ("resume", held, {}, {"status": "ACTIVE"}),
    ("park", talking, {}, {"status": "PARKED"}),
    ("mute", talking, {}, {"muted": True}),
    ("unmute", muted, {}, {"muted": False}),
    ("move", talking, {"deviceId": "+1555555"}, {"deviceIds": ["+1555555"]}),
    ("dtmf", talking, {"digits": "12#"}, {"status": "ACTIVE"}),
    ("singlesteptransfer", talking, {"blind": True, "type": "CAMP_ON", "destination": "tel:+15555"},
     {"status": "TERMINATED"}),
    ("conferenceleave", conference, {}, {"status": "TERMINATED"}),
    ("terminate", talking, {}, {"status": "TERMINATED"}),
]


@pytest.mark.parametrize(("action", "prepare", "body", "after"), ACTION_CASES, ids=[c[0] for c in ACTION_CASES])
def test_it_performs_each_action_and_gives_the_call_a_new_token(telepo, action, prepare, body, after):
    call = prepare(telepo)
    response = act(telepo, action, call["callId"], {"stateToken": call["stateToken"], **body})
    assert response.status_code == 200, response.text
    state = response.json()
    assert {key: state[key] for key in after} == after
    if state["status"] != "TERMINATED":
        assert state["stateToken"] != call["stateToken"]


def test_it_alternates_between_a_held_and_an_active_call(telepo):
    first = held(telepo)
    second = talking(telepo, "+33622222222")
    state = act(telepo, "alternate", first["callId"], {"stateToken": first["stateToken"]}).json()
    assert state["status"] == "ACTIVE"
    assert telepo.call(second["callId"])["status"] == "HELD"


@pytest.mark.parametrize("destination", ["tel:+12203", "sip:bob@organization.org"])
def test_it_rings_the_user_a_blind_transfer_names_under_the_same_call_id(telepo, receiver, destination):
    telepo.add_user("bob@organization.org", email="bob@organization.com", number="+12203", devices={"bob-soft": "SOFT"})
    call = talking(telepo)
    answer = act(telepo, "singlesteptransfer", call["callId"],
                 {"stateToken": call["stateToken"], "destination": destination, "blind": True})
    assert (answer.json()["userId"], answer.json()["status"]) == (ALICE, "TERMINATED")  # the acting user's leg
    messages = receiver.wait_for(4)
    assert [(m["seq_num"], m["state"], m["local_user_id"]) for m in messages] == [
        (1, "EARLY", ALICE), (2, "CONFIRMED", ALICE), (3, "TERMINATED", ALICE), (4, "EARLY", "bob@organization.org")]
    assert len({m["call_id"] for m in messages}) == 1
    assert snapshot(telepo)["calls"] == []  # Alice has it no more
    assert [c["status"] for c in snapshot(telepo, "bob@organization.org")["calls"]] == ["RINGING"]
    telepo.answer(call["callId"])  # Bob picks up
    assert receiver.wait_for(5)[-1]["state"] == "CONFIRMED"


def test_it_transfers_a_call_to_another_call_checking_both_tokens(telepo):
    first, second = held(telepo), talking(telepo, "+33622222222")
    stale = act(telepo, "transfer", second["callId"], {"stateToken": second["stateToken"],
                                                        "targetCallId": first["callId"], "targetStateToken": 1})
    assert (stale.status_code, stale.json()["code"]) == (409, "STATE_TOKEN_MISMATCH")
    done = act(telepo, "transfer", second["callId"], {"stateToken": second["stateToken"],
                                                       "targetCallId": first["callId"],
                                                       "targetStateToken": first["stateToken"]})
    assert done.status_code == 200, done.text
    assert telepo.call(first["callId"])["status"] == telepo.call(second["callId"])["status"] == "TERMINATED"


def test_it_removes_a_participant_from_a_conference(telepo):
    state = conference(telepo)
    (removed,) = [p["id"] for p in state["participants"] if p["id"] != state["callId"]]
    answer = act(telepo, "conferenceremove", state["callId"], {"participantId": removed}).json()
    assert removed not in [p["id"] for p in answer["participants"]]
    assert telepo.call(removed)["status"] == "TERMINATED"


def test_it_refuses_a_stale_state_token_with_a_conflict_and_changes_nothing(telepo):
    call = talking(telepo)
    response = act(telepo, "hold", call["callId"], {"stateToken": call["stateToken"] - 1})
    assert (response.status_code, response.json()["code"]) == (409, "STATE_TOKEN_MISMATCH")
    assert telepo.call(call["callId"])["status"] == "ACTIVE"


@pytest.mark.parametrize(("action", "body", "code"), [
    ("resume", {}, "ACTION_NOT_ALLOWED"),  # an active call is not held
    ("singlesteptransfer", {"destination": "+15555"}, "BAD_REQUEST"),
    ("singlesteptransfer", {"destination": "tel:+15555", "type": "LATER"}, "BAD_REQUEST"),
    ("dtmf", {"digits": "12x"}, "BAD_REQUEST"),
    ("move", {}, "BAD_REQUEST"),
])
def test_it_refuses_an_action_the_call_does_not_allow_or_a_bad_body(telepo, action, body, code):
    call = talking(telepo)
    response = act(telepo, action, call["callId"], body)
    assert (response.status_code, response.json()["code"]) == (400, code)


def test_it_answers_404_for_a_call_of_another_user(telepo):
    telepo.add_user("bob@organization.org")
    call = telepo.incoming("bob@organization.org", "+33612345678")
    assert act(telepo, "answer", call["callId"]).status_code == 404


# --- webhooks ---------------------------------------------------------------------------------------

def test_it_posts_every_state_change_with_a_seq_num_per_call(telepo, receiver):
    call = talking(telepo)
    telepo.hangup(call["callId"])
    messages = receiver.wait_for(3)
    assert [(m["seq_num"], m["state"], m.get("termination-reason")) for m in messages] == [
        (1, "EARLY", None), (2, "CONFIRMED", None), (3, "TERMINATED", "HANGUP")]
    first = messages[0]
    assert SPEC_WEBHOOK_KEYS <= set(first)
    assert (first["call_id"], first["direction"], first["local_user_id"], first["local_email"],
            first["local_number"], first["remote_number"]) == (
        call["callId"], "INCOMING", ALICE, "alice@organization.com", "+12202", "+33612345678")
    assert first["timestamp"].endswith("+0000") and len({m["branch_id"] for m in messages}) == 1
    assert receiver.paths[0] == "/api/telepo/webhook/s3cret"


@pytest.mark.parametrize(("style", "written"), [
    ("zulu", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"),
    ("colon-offset", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+02:00"),
    ("no-offset", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}"),
    ("space", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"),
    ("nanoseconds", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}\+0000"),
    ("epoch-ms", r"\d{13}"),
    ("epoch-s", r"\d{10}(\.\d{1,3})?"),
    ("unreadable", r"sometime on \w+day"),
])
def test_it_writes_the_delivered_timestamps_in_the_style_a_test_chose_and_keeps_the_specs_in_sent(
        telepo, receiver, style, written):
    import re

    assert telepo.stamp_style(style) == {"style": style}
    call = telepo.incoming(ALICE, "+33612345678")
    telepo.hangup(call["callId"])
    delivered = receiver.wait_for(2)
    assert all(re.fullmatch(written, str(m["timestamp"])) for m in delivered), [m["timestamp"] for m in delivered]
    assert all(m["timestamp"].endswith("+0000") for m in telepo.messages() if m["call_id"] == call["callId"])


@pytest.mark.parametrize("status", [409, 400, 422])
def test_it_refuses_a_stale_state_token_with_the_status_a_test_chose(telepo, status):
    assert telepo.mismatch_status(status) == {"status": status}
    call = talking(telepo)
    stale = act(telepo, "hold", call["callId"], {"stateToken": call["stateToken"] + 1})
    assert (stale.status_code, stale.json()["code"]) == (status, "STATE_TOKEN_MISMATCH")
    assert act(telepo, "hold", call["callId"], {"stateToken": call["stateToken"]}).status_code == 200
    bad = requests.post(f"{telepo.url}/_sim/telepo/actions/mismatch-status", json={"status": 200}, timeout=5)
    assert bad.status_code == 400


def test_it_refuses_a_stamp_style_it_does_not_know(telepo):
    response = requests.post(f"{telepo.url}/_sim/telepo/webhooks/stamp-style", json={"style": "roman"}, timeout=5)
    assert response.status_code == 400 and "spec" in response.json()["error"]


@pytest.mark.parametrize(("hangup", "reason"), [({}, "CANCELLED"), ({"reason": "ANSWERED_ELSEWHERE"},
                                                                     "ANSWERED_ELSEWHERE")])
def test_it_ends_an_unanswered_call_with_the_right_reason(telepo, receiver, hangup, reason):
    call = telepo.incoming(ALICE, "+33612345678")
    telepo.hangup(call["callId"], **hangup)
    assert receiver.wait_for(2)[-1]["termination-reason"] == reason


def test_it_rejects_a_ringing_call_terminated_by_the_user(telepo, receiver):
    call = telepo.incoming(ALICE, "+33612345678")
    act(telepo, "terminate", call["callId"])
    assert receiver.wait_for(2)[-1]["termination-reason"] == "REJECTED"


def test_it_only_accepts_an_https_crm_connector_url(telepo):
    response = requests.put(f"{telepo.base}/webhook-url", json={"domain": DOMAIN, "url": "http://hub.example.com/x"},
                            timeout=5)
    assert response.status_code == 400 and "HTTPS" in response.json()["error"]
    assert telepo.set_webhook_url("https://hub.example.com/api/telepo/webhook/x")["url"].startswith("https://")


def test_it_holds_then_releases_webhooks_reversed(telepo, receiver):
    telepo.hold_webhooks()
    call = talking(telepo)
    telepo.hangup(call["callId"])
    time.sleep(0.1)
    assert receiver.received == []
    assert telepo.release_webhooks("reverse")["released"] == 3
    assert [m["seq_num"] for m in receiver.wait_for(3)] == [3, 2, 1]


def test_it_shuffles_held_webhooks_repeatably(telepo, receiver):
    telepo.hold_webhooks()
    for _ in range(3):
        talking(telepo)
    telepo.release_webhooks("shuffle", seed=7)
    received = receiver.wait_for(6)
    assert sorted((m["call_id"], m["seq_num"]) for m in received) == sorted(
        (m["call_id"], m["seq_num"]) for m in telepo.messages())
    assert received != telepo.messages()


def test_it_drops_and_duplicates_the_next_messages_it_is_told_to(telepo, receiver):
    telepo.drop_next(1, state="TERMINATED")
    telepo.duplicate_next(1, state="CONFIRMED")
    call = talking(telepo)
    telepo.hangup(call["callId"])
    telepo.wait_delivered(4)
    assert [(m["seq_num"], m["state"]) for m in receiver.wait_for(3)] == [
        (1, "EARLY"), (2, "CONFIRMED"), (2, "CONFIRMED")]
    dropped = [d for d in telepo.deliveries() if d["dropped"]]
    assert [d["body"]["state"] for d in dropped] == ["TERMINATED"]


def test_it_resends_a_message_already_delivered(telepo, receiver):
    call = telepo.incoming(ALICE, "+33612345678")
    receiver.wait_for(1)
    telepo.resend(call["callId"], 1)
    first, again = receiver.wait_for(2)
    assert first == again


def test_it_records_what_ctihub_answered_each_delivery(telepo, receiver):
    receiver.status = 400
    telepo.incoming(ALICE, "+33612345678")
    (delivery,) = telepo.wait_delivered(1)
    assert (delivery["status"], delivery["url"]) == (400, receiver.url)


# --- beyond our reading of the spec, on demand (issue 14) ---------------------------------------------

VOICEMAIL = "vm-alice"


def with_voicemail(telepo):
    telepo.add_user(ALICE, email="alice@organization.com", number="+12202",
                    devices={DEVICE: "SOFT", "+1555555": "MOBILE", VOICEMAIL: "VOICEMAIL"})


def branch_messages(messages) -> list[tuple]:
    return [(m["seq_num"], m["device_type"], m["state"], m.get("termination-reason")) for m in messages]


def test_it_rings_each_device_as_a_branch_and_ends_the_others_when_one_answers(telepo, receiver):
    call = telepo.incoming(ALICE, "+33612345678", ringDevices=[DEVICE, "+1555555"])
    assert snapshot(telepo)["calls"][0]["deviceIds"] == [DEVICE, "+1555555"]
    telepo.answer(call["callId"], deviceId="+1555555")
    telepo.hangup(call["callId"])
    messages = receiver.wait_for(5)
    assert branch_messages(messages) == [
        (1, "SOFT", "EARLY", None), (2, "MOBILE", "EARLY", None), (3, "MOBILE", "CONFIRMED", None),
        (4, "SOFT", "TERMINATED", "ANSWERED_ELSEWHERE"), (5, "MOBILE", "TERMINATED", "HANGUP")]
    soft, mobile = messages[0]["branch_id"], messages[1]["branch_id"]
    assert soft != mobile and [m["branch_id"] for m in messages[2:]] == [mobile, soft, mobile]
    assert {m["call_id"] for m in messages} == {call["callId"]}


def test_it_lets_one_device_decline_while_the_others_ring_on(telepo, receiver):
    call = telepo.incoming(ALICE, "+33612345678", ringDevices=[DEVICE, "+1555555"])
    view = telepo.decline(call["callId"], "+1555555")
    assert view["status"] == "RINGING" and snapshot(telepo)["calls"][0]["deviceIds"] == [DEVICE]
    telepo.decline(call["callId"], DEVICE)
    assert branch_messages(receiver.wait_for(4))[2:] == [
        (3, "MOBILE", "TERMINATED", "REJECTED"), (4, "SOFT", "TERMINATED", "REJECTED")]
    assert (telepo.call(call["callId"])["status"], snapshot(telepo)["calls"]) == ("TERMINATED", [])


def test_it_diverts_a_ringing_call_to_voicemail_which_is_no_answer(telepo, receiver):
    with_voicemail(telepo)
    call = telepo.incoming(ALICE, "+33612345678")
    view = telepo.divert(call["callId"], VOICEMAIL)
    assert (view["status"], view["takenBy"], view["deviceIds"]) == ("ACTIVE", VOICEMAIL, [VOICEMAIL])
    assert actions_of(snapshot(telepo)["calls"][0]) == ["TERMINATE"]
    telepo.hangup(call["callId"])  # the caller has left a message
    assert branch_messages(receiver.wait_for(4)) == [
        (1, "SOFT", "EARLY", None), (2, "VOICEMAIL", "CONFIRMED", None),
        (3, "SOFT", "TERMINATED", "ANSWERED_ELSEWHERE"), (4, "VOICEMAIL", "TERMINATED", "HANGUP")]


def test_it_moves_a_forked_call_as_a_new_branch_set_up_before_the_old_one_ends(telepo, receiver):
    call = telepo.incoming(ALICE, "+33612345678", ringDevices=[DEVICE, "+1555555"])
    state = telepo.answer(call["callId"], deviceId=DEVICE)
    assert act(telepo, "move", call["callId"], {"stateToken": state["stateToken"], "deviceId": "+1555555"}).ok
    assert branch_messages(receiver.wait_for(7))[4:] == [
        (5, "MOBILE", "EARLY", None), (6, "MOBILE", "CONFIRMED", None), (7, "SOFT", "TERMINATED", "HANGUP")]


def test_it_shows_a_status_under_another_name_in_the_snapshot(telepo):
    call = telepo.incoming(ALICE, "+33612345678")
    telepo.set_status_name(call["callId"], "QUEUED")
    assert snapshot(telepo)["calls"][0]["status"] == "QUEUED"
    telepo.set_status_name(call["callId"], None)
    assert snapshot(telepo)["calls"][0]["status"] == "RINGING"


def test_it_renames_the_next_messages_it_is_told_to(telepo, receiver):
    telepo.rename_next("REFERRED", state="CONFIRMED")
    telepo.rename_next("TIMEOUT", field="termination-reason")
    call = talking(telepo)
    telepo.hangup(call["callId"])
    messages = receiver.wait_for(3)
    assert [(m["state"], m.get("termination-reason")) for m in messages] == [
        ("EARLY", None), ("REFERRED", None), ("TERMINATED", "TIMEOUT")]
    assert telepo.messages() == messages  # what Telepo said, not a delivery fault


def test_it_answers_the_next_action_failed_like_the_spec_and_does_nothing(telepo):
    call = talking(telepo)
    assert telepo.fail_next("hold", "Hold rejected")["remaining"] == 1
    refused = act(telepo, "hold", call["callId"], {"stateToken": call["stateToken"]})
    assert refused.status_code == 200
    body = refused.json()
    assert (body["event"], body["eventDescription"], body["status"], body["stateToken"]) == (
        "FAILED", "Hold rejected", "ACTIVE", call["stateToken"])
    assert "event" not in act(telepo, "hold", call["callId"]).json()  # only the next one


def test_it_answers_a_make_call_failed_with_the_specs_description(telepo, receiver):
    telepo.fail_next("make")
    response = telepo.api("POST", f"{CONTROL}/make/{DOMAIN}/{ALICE}/{DEVICE}", {"destination": "tel:+33612345678"})
    body = response.json()
    assert (response.status_code, body["event"], body["eventDescription"]) == (
        200, "FAILED", "Call setup failed with status code 504")
    assert telepo._call("GET", "/calls") == [] and telepo.messages() == []


@pytest.mark.parametrize(("route", "body"), [
    ("/actions/fail-next", {"action": "teleport"}),
    ("/actions/fail-next", {"count": 0}),
    ("/webhooks/rename-next", {"to": "X", "field": "call_id"}),
    ("/webhooks/rename-next", {}),
])
def test_it_refuses_a_bad_fault_request(telepo, route, body):
    response = requests.post(f"{telepo.base}{route}", json=body, timeout=5)
    assert response.status_code == 400, response.text
