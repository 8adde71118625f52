"""myRCC call-line snapshots into CallUpdates: the doc's examples and the cases around them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from telephony import updates as u
from telephony.domain import apply_call_update, apply_call_updates
from telephony.models import Call, PbxAccount
from telephony.providers import unexpected
from telephony.providers.istra_myrcc.frames import parse_myrcc_frame
from telephony.providers.istra_myrcc.transport import MyRccProvider
from telephony.updates import FrameRejected
from tests.factories import make_account, make_terminal

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def at_ms(millis: int) -> datetime:
    return datetime.fromtimestamp(millis // 1000, tz=UTC).replace(microsecond=(millis % 1000) * 1000)


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
    assert update.frame_id.startswith("1420707629443:talking:")
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
    ("alerting", True, u.RINGING),
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


@pytest.mark.django_db
def test_it_applies_a_snapshot_whose_actions_changed_at_the_same_modification_time(rcc_provider):
    # A second line on the extension brings transfer and merge to the first; the simulator re-pushes the first
    # with its modification time unchanged, and nothing says Istra moves it. Taken for a duplicate, the first
    # call's card kept no transfer button.
    (spec,) = rcc_provider.listener_specs([])
    alone = frame(lineId="-7", state="talking", lastModificationTime="1420707783052", actions=["hold", "disconnect"])
    with_a_second = frame(lineId="-7", state="talking", lastModificationTime="1420707783052",
                          actions=["hold", "disconnect", "transfer", "merge"])
    for text in (alone, with_a_second, with_a_second):
        apply_call_updates(rcc_provider.parse_frame(text, spec))
    call = Call.objects.get(account=rcc_provider.account, pbx_call_id="-7")
    assert set(call.allowed_actions) == {u.HOLD, u.HANGUP, u.TRANSFER, u.MERGE}
    assert call.events.count() == 2  # the repeated one is still a duplicate


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
    '{"count": 1, "results": ["held"]}',
])
def test_it_rejects_a_frame_that_is_not_a_list_of_lines_with_framerejected_only(text):
    with pytest.raises(FrameRejected):
        parse_myrcc_frame(text, 3)


@pytest.mark.parametrize("text", [
    frame(state=None),
    json.dumps({"item": [{"state": "talking"}]}),  # no line id at all
])
def test_it_skips_a_line_without_an_id_or_a_state_without_raising(text):
    assert parse_myrcc_frame(text, 3) == []


@pytest.mark.parametrize(("fields", "absent"), [
    ({"isIncoming": "yes"}, "direction"),
    ({"actions": "hold"}, "allowed_actions"),
    ({"creationTime": "yesterday"}, "started_at"),
    ({"creationTime": "-1"}, "started_at"),
    ({"talkingTime": "99999999999999999999999"}, "answered_at"),
    ({"extension": "v1/rcc/Somewhere/1"}, "terminal_pbx_id"),
    ({"displayedNumber": ["102"]}, "remote_number"),
    ({"stateCause": ["causeNormal"]}, "end_cause"),
])
def test_it_applies_a_line_reading_a_field_it_cannot_read_as_absent_and_says_so_once(fields, absent, caplog):
    # The spec shows these fields as strings of digits and links; a PBX that sends something else there
    # must not cost the snapshot: a lost "dropped" leaves the call ringing until the sweep.
    unexpected.forget()
    with caplog.at_level("WARNING"):
        first = parse_one(frame(state="dropped", **fields))
        again = parse_one(frame(state="dropped", **fields))
    assert (first.pbx_call_id, first.state) == (again.pbx_call_id, again.state) == ("-7", u.ENDED)
    assert getattr(first, absent) is None
    (record,) = [r for r in caplog.records if "read as absent" in r.getMessage()]
    assert next(iter(fields)) in record.getMessage() and record.account_id == 3


def test_it_keeps_the_actions_that_are_names_when_others_are_not():
    update = parse_one(frame(actions=[None, "hold", {"hold": True}, "disconnect"]))
    assert update.allowed_actions == (u.HOLD, u.HANGUP)


@pytest.mark.parametrize(("fields", "read"), [
    ({"isIncoming": "True"}, ("direction", u.INBOUND)),
    ({"isIncoming": "FALSE"}, ("direction", u.OUTBOUND)),
    ({"extension": "https://pbx.example/restletrouter/v1/rcc/Extension/897778778/"}, ("terminal_pbx_id", "897778778")),
    ({"creationTime": "1420635413530.0"}, ("started_at", at_ms(1420635413530))),
])
def test_it_reads_the_spellings_a_serializer_may_choose(fields, read):
    attribute, value = read
    assert getattr(parse_one(frame(**fields)), attribute) == value


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


# --- what the spec leaves open: states it never shows, lines that cannot be read ------------------------

def feed(provider, *names: str) -> None:
    """Fixture frames through the provider's own parser, into the domain: what the supervisor does."""
    (spec,) = provider.listener_specs([])
    for name in names:
        apply_call_updates(provider.parse_frame(fixture(name), spec))


@pytest.fixture
def rcc_provider():
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC)
    for pbx_id in ("897778778", "4588897", "105"):
        make_terminal(account, pbx_id=pbx_id)
    unexpected.forget()
    return MyRccProvider(account)


@pytest.mark.django_db
def test_it_applies_every_line_of_a_catch_up_list_holding_a_state_the_spec_does_not_show(rcc_provider):
    feed(rcc_provider, "call_lines_list_unknown_state")

    calls = {c.pbx_call_id: c for c in Call.objects.filter(account=rcc_provider.account)}
    assert {i: c.state for i, c in calls.items()} == {"-2898": "held", "-2903": "talking", "-2910": "ringing"}
    offered = calls["-2910"]  # first seen "offering": an incoming line it does not know yet rings
    assert (offered.direction, offered.remote_number_e164, offered.allowed_actions) == (
        "in", "+33612345678", [u.ANSWER, u.HANGUP, u.REDIRECT])
    (event,) = offered.events.all()
    assert (event.kind, event.payload["state"]) == ("callLine.offering", "offering")  # the PBX's own word, kept


@pytest.mark.django_db
def test_it_keeps_a_talking_call_talking_through_a_snapshot_in_an_unknown_state(rcc_provider):
    feed(rcc_provider, "frame_5499_talking", "frame_5499_unknown_state")

    call = Call.objects.get(account=rcc_provider.account, pbx_call_id="-5499")
    assert (call.state, call.answered_at) == (Call.State.TALKING, at_ms(1420707629443))
    assert call.allowed_actions == [u.HANGUP, u.LEAVE, u.SEND_DTMF]  # the rest of the snapshot applies
    assert list(call.events.order_by("id").values_list("kind", flat=True)) == [
        "callLine.talking", "callLine.conferenced"]

    feed(rcc_provider, "frame_5499_dropped")
    call.refresh_from_db()
    assert (call.state, call.end_cause) == (Call.State.ENDED, u.END_HANGUP)


def test_it_names_a_state_it_does_not_know_as_the_pbx_state_and_a_known_one_not():
    assert parse_one(frame(state="offering")).pbx_state == "offering"
    assert [parse_one(frame(state=state)).pbx_state for state in ("talking", "alerting", "ringing")] == [None] * 3


@pytest.mark.django_db
def test_it_shows_the_pbxs_word_for_a_state_on_the_call_until_a_known_one_comes(rcc_provider):
    feed(rcc_provider, "frame_5499_talking", "frame_5499_unknown_state")
    call = Call.objects.get(account=rcc_provider.account, pbx_call_id="-5499")
    assert (call.state, call.pbx_state) == (Call.State.TALKING, "conferenced")
    feed(rcc_provider, "frame_5499_dropped")
    call.refresh_from_db()
    assert (call.state, call.pbx_state) == (Call.State.ENDED, "")


@pytest.mark.django_db
def test_it_applies_the_other_lines_of_a_frame_holding_a_line_it_cannot_read(rcc_provider, caplog):
    with caplog.at_level("WARNING"):
        feed(rcc_provider, "frame_two_lines_one_without_a_state")

    assert list(Call.objects.filter(account=rcc_provider.account).values_list("pbx_call_id", "state")) == [
        ("-2912", "talking")]
    (record,) = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert "without a state" in record.getMessage() and record.account_id == rcc_provider.account.pk


@pytest.mark.django_db
def test_it_applies_a_line_whose_creation_time_is_not_epoch_milliseconds(rcc_provider, caplog):
    with caplog.at_level("WARNING"):
        feed(rcc_provider, "frame_two_lines_one_with_an_iso_creation_time")

    calls = Call.objects.filter(account=rcc_provider.account).order_by("pbx_call_id")
    assert [(c.pbx_call_id, c.state) for c in calls] == [("-2911", "ringing"), ("-2912", "talking")]
    (record,) = [r for r in caplog.records if "read as absent" in r.getMessage()]
    assert "creationTime" in record.getMessage() and record.account_id == rcc_provider.account.pk


def test_it_logs_an_unknown_state_once_per_account_and_value(caplog):
    unexpected.forget()
    text = fixture("frame_5499_unknown_state")
    with caplog.at_level("WARNING"):
        for account_id in (3, 3, 3, 4):
            parse_myrcc_frame(text, account_id)
        parse_myrcc_frame(text.replace("conferenced", "consulting"), 3)
    said = [(r.account_id, r.getMessage()) for r in caplog.records]
    assert [account_id for account_id, _ in said] == [3, 4, 3]
    assert "'conferenced'" in said[0][1] and "-5499" in said[0][1] and "'consulting'" in said[2][1]


def test_it_reads_an_alerting_line_as_ringing_like_mycrms_callalerting_without_a_warning(caplog):
    unexpected.forget()
    with caplog.at_level("WARNING"):
        update = parse_one(fixture("frame_incoming_alerting"))
    assert (update.state, update.direction, update.kind) == (u.RINGING, u.INBOUND, "callLine.alerting")
    assert parse_one(frame(state="alerting", isIncoming=False)).state == u.DIALING
    assert caplog.records == []


@pytest.mark.parametrize(("incoming", "expected"), [(True, u.RINGING), (False, u.DIALING), (None, u.RINGING)])
def test_it_gives_a_line_first_seen_in_an_unknown_state_the_ringing_state_of_its_direction(incoming, expected):
    fields = {"state": "offering", "isIncoming": incoming}
    assert parse_one(frame(**fields)).state == expected


def test_it_forgets_a_line_once_dropped_so_a_recycled_id_starts_as_new():
    from telephony.providers.istra_myrcc.frames import LineStates

    lines = LineStates()
    parse_myrcc_frame(frame(state="held"), 3, lines)
    assert parse_myrcc_frame(frame(state="offering"), 3, lines)[0].state == u.HELD
    parse_myrcc_frame(frame(state="dropped"), 3, lines)
    assert parse_myrcc_frame(frame(state="offering"), 3, lines)[0].state == u.RINGING
