"""myRCC call-line snapshots into CallUpdates: the doc's examples and the cases around them."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from telephony import updates as u
from telephony.domain import apply_call_update
from telephony.models import Call, PbxAccount
from telephony.providers.istra_myrcc.frames import parse_myrcc_frame
from telephony.updates import FrameRejected
from tests.factories import make_account, make_terminal

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def at_ms(millis: int) -> datetime:
    return datetime.fromtimestamp(millis // 1000, tz=timezone.utc).replace(microsecond=(millis % 1000) * 1000)


def line(**fields) -> dict:
    return {"lineId": "-7", "state": "talking", "isIncoming": True, "lastModificationTime": "1420707629443",
            "extension": "v1/rcc/Extension/897778778", **fields}


def frame(**fields) -> str:
    return json.dumps({"listenerName": "CallLines", "item": [line(**fields)]})


def parse_one(text: str):
    (update,) = parse_myrcc_frame(text, 3)
    return update


# --- the doc's examples ------------------------------------------------------------------------------

def test_it_reads_the_docs_talking_snapshot():
    update = parse_one(fixture("frame_5499_talking"))
    assert (update.account_id, update.pbx_call_id, update.terminal_pbx_id) == (3, "-5499", "897778778")
    assert (update.state, update.direction) == (u.TALKING, u.OUTBOUND)
    assert (update.remote_number, update.remote_number_e164, update.remote_label) == (
        "102", "+33412345670", "Alice Withe")
    assert update.allowed_actions == (u.ADD_PARTY, u.HANGUP, u.HOLD, u.LEAVE, u.REDIRECT, u.SEND_DTMF)
    assert update.started_at == at_ms(1420707629436)
    assert update.answered_at == at_ms(1420707629443)  # talkingTime is a timestamp, not a duration
    assert update.occurred_at == at_ms(1420707629443)
    assert update.frame_id == "1420707629443:talking"
    assert update.payload["stateCause"] == "causeNormal"


def test_it_reads_the_docs_held_snapshot_and_offers_resume():
    update = parse_one(fixture("frame_5499_held"))
    assert update.state == u.HELD
    assert update.allowed_actions == (u.ADD_PARTY, u.HANGUP, u.RESUME, u.LEAVE, u.REDIRECT)


def test_it_leaves_out_actions_it_cannot_drive():
    update = parse_one(fixture("frame_5499_unheld"))
    assert "startRecord" not in update.allowed_actions
    assert u.SEND_DTMF in update.allowed_actions


def test_it_reads_the_docs_dropped_snapshot_as_ended_after_a_conversation():
    update = parse_one(fixture("frame_5499_dropped"))
    assert (update.state, update.end_cause, update.allowed_actions) == (u.ENDED, u.END_HANGUP, None)


def test_it_reads_the_docs_placecall_answer_as_our_phone_being_prompted():
    update = parse_myrcc_frame(json.dumps({"item": json.loads(fixture("place_call_answer"))}), 3)[0]
    assert (update.state, update.direction, update.terminal_pbx_id) == (u.DIALING, u.OUTBOUND, "897778778")
    assert update.allowed_actions == (u.HANGUP, u.ANSWER)
    assert update.frame_id is None  # no lastModificationTime in that answer


def test_it_reads_the_get_callline_list_like_frames():
    held, talking = parse_myrcc_frame(fixture("call_lines_list"), 3)
    assert (held.pbx_call_id, held.state, held.terminal_pbx_id) == ("-2898", u.HELD, "897778778")
    assert (talking.pbx_call_id, talking.state, talking.terminal_pbx_id) == ("-2903", u.TALKING, "105")
    assert talking.allowed_actions == (
        u.ADD_PARTY, u.HANGUP, u.HOLD, u.LEAVE, u.REDIRECT, u.TRANSFER, u.MERGE, u.SEND_DTMF)


def test_it_reads_the_docs_monitoring_frame():
    update = parse_one(fixture("frame_monitoring_talking"))
    assert (update.pbx_call_id, update.state, update.remote_label) == ("-2903", u.TALKING, "Jhon Doe")


@pytest.mark.parametrize("key", ["extension", "uriExtension", "extensionURI"])
def test_it_reads_the_extension_link_under_each_of_its_three_spellings(key):
    item = {k: v for k, v in line().items() if k != "extension"}
    item[key] = "v1/rcc/Extension/5985841581756135023"
    assert parse_one(json.dumps({"item": [item]})).terminal_pbx_id == "5985841581756135023"


# --- states ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "incoming", "expected"), [
    ("prompting", False, u.DIALING),
    ("ringing", True, u.RINGING),
    ("ringing", False, u.DIALING),
    ("talking", True, u.TALKING),
    ("held", True, u.HELD),
    ("dropped", True, u.ENDED),
])
def test_it_maps_each_line_state(state, incoming, expected):
    assert parse_one(frame(state=state, isIncoming=incoming)).state == expected


def test_it_gives_the_same_snapshot_the_same_frame_id_and_a_new_one_another():
    first = parse_one(frame(state="held", lastModificationTime="1420707783052"))
    again = parse_one(frame(state="held", lastModificationTime="1420707783052"))
    later = parse_one(frame(state="talking", lastModificationTime="1420707787595"))
    assert first.frame_id == again.frame_id != later.frame_id


@pytest.mark.parametrize(("incoming", "talking_time", "end_cause"), [
    (True, None, u.END_NO_ANSWER),
    (False, None, u.END_CANCELLED),
    (True, "1420707629443", u.END_HANGUP),
])
def test_it_tells_a_missed_or_cancelled_line_from_a_hung_up_one(incoming, talking_time, end_cause):
    fields = {"state": "dropped", "isIncoming": incoming, "stateCause": "causeNormal"}
    if talking_time:
        fields["talkingTime"] = talking_time
    assert parse_one(frame(**fields)).end_cause == end_cause


def test_it_recognises_a_busy_cause_and_leaves_unknown_ones_to_the_domain():
    assert parse_one(frame(state="dropped", stateCause="causeBusy")).end_cause == u.END_BUSY
    assert parse_one(frame(state="dropped", stateCause="causeSomethingElse")).end_cause is None


def test_it_keeps_64_bit_ids_exact_even_when_sent_as_numbers():
    text = ('{"item": [{"lineId": 5985841581756135023, "state": "talking", '
            '"extension": "v1/rcc/Extension/5985841581756135024"}]}')
    update = parse_one(text)
    assert (update.pbx_call_id, update.terminal_pbx_id) == ("5985841581756135023", "5985841581756135024")


def test_it_takes_the_line_id_from_resturi_when_lineid_is_missing():
    item = {k: v for k, v in line(restUri="v1/rcc/CallLine/-9").items() if k != "lineId"}
    assert parse_one(json.dumps({"item": [item]})).pbx_call_id == "-9"


def test_it_reads_an_empty_list_as_no_updates():
    assert parse_myrcc_frame('{"count": 0, "results": []}', 3) == []


# --- malformed input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "{",
    "null",
    '{"listenerName": "CallLines"}',
    '{"count": 1, "results": 7}',
    frame(state="exploded"),
    frame(state=None),
    json.dumps({"item": [{"state": "talking"}]}),  # no line id at all
    frame(isIncoming="yes"),
    frame(actions="hold"),
    frame(actions=[None, {"hold": True}]),
    frame(creationTime="yesterday"),
    frame(talkingTime="99999999999999999999999"),
    frame(extension="v1/rcc/Somewhere/1"),
    frame(displayedNumber=["102"]),
])
def test_it_rejects_a_malformed_frame_with_framerejected_only(text):
    with pytest.raises(FrameRejected):
        parse_myrcc_frame(text, 3)


# --- what the domain makes of them -------------------------------------------------------------------

@pytest.mark.django_db
def test_it_gives_the_domain_snapshots_it_stores_once_each():
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC)
    make_terminal(account, pbx_id="897778778")
    for name in ("frame_5499_talking", "frame_5499_talking", "frame_5499_held", "frame_5499_unheld",
                 "frame_5499_held", "frame_5499_dropped"):
        for update in parse_myrcc_frame(fixture(name), account.pk):
            apply_call_update(update)
    call = Call.objects.get(account=account, pbx_call_id="-5499")
    assert (call.state, call.direction, call.end_cause, call.terminal.pbx_id) == (
        Call.State.ENDED, Call.Direction.OUTBOUND, u.END_HANGUP, "897778778")
    assert call.answered_at == at_ms(1420707629443)
    assert call.events.count() == 4  # a snapshot received again changes nothing
