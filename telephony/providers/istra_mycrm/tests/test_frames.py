"""myCrm call events into CallUpdates: the doc's examples and the cases around them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from telephony import updates as u
from telephony.domain import apply_call_update, apply_call_updates
from telephony.models import Call
from telephony.providers import unexpected
from telephony.providers.istra_mycrm.frames import parse_mycrm_frame
from telephony.providers.istra_mycrm.transport import MyCrmProvider
from telephony.updates import FrameRejected
from tests.factories import make_account, make_terminal

FIXTURES = Path(__file__).parent / "fixtures"
TERMINAL = "5985841581756135023"


def fixture(name: str) -> str:
    return (FIXTURES / f"{name}.json").read_text()


def frame(**item) -> str:
    return json.dumps({"listenerName": "ctihub-1", "item": [{"callId": "-428", **item}]})


def parse_one(text: str):
    (update,) = parse_mycrm_frame(text, 7, TERMINAL)
    return update


# --- the doc's examples ------------------------------------------------------------------------

def test_it_reads_the_docs_callringing_example_as_an_incoming_internal_call_ringing():
    update = parse_one(fixture("event_call_ringing"))
    assert (update.account_id, update.pbx_call_id, update.terminal_pbx_id) == (7, "-428", TERMINAL)
    assert (update.state, update.direction, update.is_internal) == (u.RINGING, u.INBOUND, True)
    assert (update.remote_number, update.remote_label, update.external_phone) == ("104", "ACD-171-S-0", "0900000171")
    assert update.remote_number_e164 is None  # "104" is an extension, not E.164
    assert update.kind == "callRinging"
    assert update.payload["acdId"] == "0900000171"


def test_it_reads_the_docs_calltalking_example():
    update = parse_one(fixture("event_call_talking"))
    assert (update.state, update.direction) == (u.TALKING, u.INBOUND)
    assert update.payload["talkCause"] == "transferred"
    assert update.kind == "callTalking.transferred"


def test_it_reads_the_docs_calldropped_example_with_its_string_durations():
    update = parse_one(fixture("event_call_dropped"))
    assert update.state == u.ENDED
    assert (update.ringing_ms, update.talking_ms) == (262, 81)
    assert update.end_cause == u.END_TRANSFERRED


# --- each event ----------------------------------------------------------------------------------

def test_it_reads_callalerting_without_a_flag_as_the_far_end_ringing_for_a_call_we_dialled():
    update = parse_one(frame(event="callAlerting", type="external", displayNumber="0612345678",
                             displayNumberE164="+33612345678", displayLabel="Dupont"))
    assert (update.state, update.direction, update.is_internal) == (u.DIALING, u.OUTBOUND, False)
    assert (update.remote_number, update.remote_number_e164) == ("0612345678", "+33612345678")


def test_it_reads_callringing_of_a_call_we_dialled_as_dialing():
    update = parse_one(frame(event="callRinging", incoming=False, type="external", displayNumber="555"))
    assert (update.state, update.direction) == (u.DIALING, u.OUTBOUND)


def test_it_trusts_the_incoming_flag_over_the_event_name():
    assert parse_one(frame(event="callAlerting", incoming=True)).state == u.RINGING
    assert parse_one(frame(event="callRinging", incoming=False)).state == u.DIALING


def test_it_reads_a_ringing_event_without_a_flag_as_the_docs_example_has_it():
    # The doc's field lists give the two events no direction; its one example is callRinging, incoming.
    assert (parse_one(frame(event="callRinging")).state, parse_one(frame(event="callRinging")).direction) == (
        u.RINGING, u.INBOUND)
    assert parse_one(frame(event="callAlerting")).state == u.DIALING


def test_it_reads_callheld_which_carries_only_the_call_id():
    update = parse_one(frame(event="callHeld"))
    assert (update.state, update.direction, update.remote_number) == (u.HELD, None, None)


@pytest.mark.parametrize(("drop_cause", "end_cause"), [
    ("rejected", u.END_REJECTED),
    ("transferred", u.END_TRANSFERRED),
    ("busy", u.END_BUSY),
    ("noAnswer", u.END_NO_ANSWER),
    ("unavailable", u.END_UNAVAILABLE),
    ("error", u.END_FAILED),
])
def test_it_maps_each_drop_cause(drop_cause, end_cause):
    update = parse_one(frame(event="callDropped", incoming=True, dropCause=drop_cause, ringingTime="5000",
                             talkingTime="0"))
    assert update.end_cause == end_cause


@pytest.mark.parametrize(("incoming", "talking_time", "end_cause"), [
    (True, "81", u.END_HANGUP),
    (False, "81", u.END_HANGUP),
    (True, "0", u.END_NO_ANSWER),  # the caller gave up: a missed call
    (False, "0", u.END_CANCELLED),  # we gave up on our own call
])
def test_it_tells_a_hangup_from_a_missed_or_cancelled_call_on_disconnect(incoming, talking_time, end_cause):
    update = parse_one(frame(event="callDropped", incoming=incoming, dropCause="disconnect",
                             ringingTime="3000", talkingTime=talking_time))
    assert update.end_cause == end_cause


def test_it_leaves_an_undocumented_drop_cause_to_the_domain_but_still_ends_the_call():
    update = parse_one(frame(event="callDropped", dropCause="somethingNew"))
    assert (update.state, update.end_cause) == (u.ENDED, None)


def test_it_only_trusts_an_e164_number_that_starts_with_plus():
    assert parse_one(frame(event="callAlerting", displayNumberE164="0612345678")).remote_number_e164 is None


def test_it_reads_every_item_of_a_frame():
    text = json.dumps({"listenerName": "x", "item": [
        {"callId": "1", "event": "callHeld"}, {"callId": "2", "event": "callTalking", "incoming": False},
    ]})
    assert [(x.pbx_call_id, x.state) for x in parse_mycrm_frame(text, 7, TERMINAL)] == [("1", u.HELD), ("2", u.TALKING)]


def test_it_keeps_a_64_bit_call_id_exact_even_when_sent_as_a_number():
    text = '{"listenerName": "x", "item": [{"callId": 5985841581756135023, "event": "callHeld"}]}'
    assert parse_one(text).pbx_call_id == "5985841581756135023"


# --- malformed input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "not json",
    "",
    "[1, 2]",
    '{"listenerName": "x"}',
    '{"listenerName": "x", "item": ["callHeld"]}',
])
def test_it_rejects_a_frame_that_is_not_a_list_of_items_with_framerejected_only(text):
    with pytest.raises(FrameRejected):
        parse_mycrm_frame(text, 7, TERMINAL)


@pytest.mark.parametrize("text", [
    frame(event="callExploded"),
    frame(event=None),
    json.dumps({"item": [{"event": "callHeld"}]}),  # no callId
    json.dumps({"item": [{"event": "callHeld", "callId": ""}]}),
    json.dumps({"item": [{"event": "callHeld", "callId": ["-428"]}]}),
])
def test_it_skips_an_item_without_a_known_event_or_a_call_id_without_raising(text):
    assert parse_mycrm_frame(text, 7, TERMINAL) == []


@pytest.mark.parametrize(("fields", "absent"), [
    ({"event": "callDropped", "Incoming": "maybe"}, "direction"),
    ({"event": "callDropped", "ringingTime": "fast"}, "ringing_ms"),
    ({"event": "callDropped", "ringingTime": "-1"}, "ringing_ms"),
    ({"event": "callDropped", "talkingTime": "-5"}, "talking_ms"),
    ({"event": "callDropped", "dropCause": ["busy"]}, "end_cause"),
    ({"event": "callTalking", "displayNumber": ["104"]}, "remote_number"),
    ({"event": "callTalking", "acdId": {"id": "0900000171"}}, "external_phone"),
])
def test_it_applies_an_event_reading_a_field_it_cannot_read_as_absent_and_says_so_once(fields, absent, caplog):
    # The doc shows durations as strings of digits and the rest as text; a PBX that sends something else
    # there must not cost the event: a lost callDropped leaves the call ringing until the sweep.
    unexpected.forget()
    with caplog.at_level("WARNING"):
        first = parse_one(frame(**fields))
        again = parse_one(frame(**fields))
    expected = u.ENDED if fields["event"] == "callDropped" else u.TALKING
    assert (first.pbx_call_id, first.state) == (again.pbx_call_id, again.state) == ("-428", expected)
    assert getattr(first, absent) is None
    (record,) = [r for r in caplog.records if "read as absent" in r.getMessage()]
    field = next(key for key in fields if key != "event")
    assert field in record.getMessage() and record.account_id == 7


def test_it_reads_a_ringing_event_whose_flag_it_cannot_read_by_the_events_name():
    assert parse_one(frame(event="callRinging", incoming="maybe")).state == u.RINGING
    assert parse_one(frame(event="callAlerting", incoming="maybe")).state == u.DIALING


@pytest.mark.parametrize(("fields", "read"), [
    ({"event": "callRinging", "incoming": "True"}, ("direction", u.INBOUND)),
    ({"event": "callDropped", "Incoming": "FALSE"}, ("direction", u.OUTBOUND)),
    ({"event": "callDropped", "talkingTime": "262.0"}, ("talking_ms", 262)),
    ({"event": "callDropped", "ringingTime": 81.5}, ("ringing_ms", 81)),
])
def test_it_reads_the_spellings_a_serializer_may_choose(fields, read):
    attribute, value = read
    assert getattr(parse_one(frame(**fields)), attribute) == value


# --- what the domain makes of them -------------------------------------------------------------------

@pytest.mark.django_db
def test_it_gives_the_domain_the_docs_call_from_ringing_to_dropped():
    account = make_account()
    make_terminal(account, pbx_id=TERMINAL)
    for name in ("event_call_ringing", "event_call_talking", "event_call_dropped"):
        for update in parse_mycrm_frame(fixture(name), account.pk, TERMINAL):
            apply_call_update(update)
    call = Call.objects.get(account=account, pbx_call_id="-428")
    assert (call.state, call.direction, call.is_internal, call.end_cause) == (
        Call.State.ENDED, Call.Direction.INBOUND, True, u.END_TRANSFERRED)
    assert (call.ringing_ms, call.talking_ms, call.terminal.pbx_id) == (262, 81, TERMINAL)


def test_it_reads_a_drop_with_talking_time_as_answered_at_the_end_minus_the_talking_time():
    """Recorded from a PBX after an outage: the callTalking was never sent, only this drop."""
    update = parse_one(fixture("event_call_dropped_after_outage"))
    assert (update.state, update.end_cause, update.talking_ms, update.ringing_ms) == (u.ENDED, u.END_HANGUP, 1006, 1522)
    assert update.occurred_at - update.answered_at == timedelta(milliseconds=1006)


def test_it_reads_a_drop_without_talking_time_as_never_answered():
    assert parse_one(frame(event="callDropped", dropCause="disconnect", incoming=True, talkingTime="0")).answered_at is None
    assert parse_one(frame(event="callDropped", dropCause="noAnswer")).answered_at is None


def test_it_still_ends_a_call_answered_whose_talking_time_is_implausibly_long():
    update = parse_one(frame(event="callDropped", dropCause="disconnect", incoming=True, talkingTime="9" * 18))
    assert update.state == u.ENDED and update.answered_at is not None


@pytest.mark.django_db
def test_it_stores_a_call_answered_while_the_socket_was_down_as_answered():
    # retailCRM's hangupStatus and upload result follow answered_at (crm_sync/tests/test_payloads.py).
    account = make_account()
    make_terminal(account, pbx_id=TERMINAL)
    ringing = frame(event="callRinging", incoming=True, displayNumber="0612345678",
                    displayNumberE164="+33612345678", type="external").replace("-428", "-431")
    for text in (ringing, fixture("event_call_dropped_after_outage")):
        for update in parse_mycrm_frame(text, account.pk, TERMINAL):
            apply_call_update(update)
    call = Call.objects.get(account=account, pbx_call_id="-431")
    assert (call.state, call.end_cause, call.talking_ms, call.ringing_ms) == (Call.State.ENDED, u.END_HANGUP, 1006, 1522)
    assert call.ended_at - call.answered_at == timedelta(milliseconds=1006)


# --- what the doc leaves open: its field lists' spelling, talkCause, events it does not list ----------------

def feed(account, *texts: str) -> None:
    """Frames through the provider's own parser, into the domain: what the supervisor does."""
    provider = MyCrmProvider(account)
    (spec,) = provider.listener_specs([TERMINAL])
    for text in texts:
        apply_call_updates(provider.parse_frame(text, spec))


@pytest.fixture
def account():
    account = make_account()
    make_terminal(account, pbx_id=TERMINAL)
    unexpected.forget()
    return account


@pytest.mark.django_db
def test_it_reads_the_field_lists_capitalised_incoming_on_a_drop_after_an_outage(account):
    """The doc lists "Incoming (true/false)" on callDropped: our own call, given up, is no missed inbound call."""
    feed(account, fixture("event_call_dropped_spec_fields"))

    call = Call.objects.get(account=account, pbx_call_id="-440")
    assert (call.direction, call.end_cause, call.answered_at) == (Call.Direction.OUTBOUND, u.END_CANCELLED, None)


def test_it_reads_incoming_before_incoming_capitalised_when_both_are_sent():
    assert parse_one(frame(event="callTalking", incoming=True, Incoming=False)).direction == u.INBOUND
    assert parse_one(frame(event="callTalking", Incoming="true")).direction == u.INBOUND


@pytest.mark.django_db
def test_it_names_each_talking_event_by_its_talkcause_so_a_resume_is_no_answer(account):
    answered = frame(event="callTalking", incoming=True, talkCause="answer")
    feed(account, fixture("event_call_ringing"), answered)
    answered_at = Call.objects.get(account=account, pbx_call_id="-428").answered_at
    feed(account, frame(event="callHeld"), fixture("event_call_talking_unhold"))

    call = Call.objects.get(account=account, pbx_call_id="-428")
    assert list(call.events.order_by("id").values_list("kind", flat=True)) == [
        "callRinging", "callTalking.answer", "callHeld", "callTalking.unHold"]
    assert (call.state, call.answered_at) == (Call.State.TALKING, answered_at)


def test_it_keeps_the_plain_event_name_for_a_talkcause_the_doc_does_not_list(caplog):
    unexpected.forget()
    with caplog.at_level("WARNING"):
        assert parse_one(frame(event="callTalking", talkCause="pickup")).kind == "callTalking"
        assert parse_one(frame(event="callTalking", talkCause={"odd": 1})).kind == "callTalking"
    assert ["'pickup'" in r.getMessage() for r in caplog.records] == [True]


@pytest.mark.django_db
def test_it_applies_the_other_items_of_a_frame_naming_an_event_the_doc_does_not_list(account, caplog):
    with caplog.at_level("WARNING"):
        feed(account, fixture("frame_unknown_event_among_others"), fixture("frame_unknown_event_among_others"))

    states = dict(Call.objects.filter(account=account).values_list("pbx_call_id", "state"))
    assert states == {"-428": "held", "-432": "talking"}
    assert Call.objects.get(account=account, pbx_call_id="-432").direction == Call.Direction.OUTBOUND
    said = [r for r in caplog.records if "callParked" in r.getMessage()]
    assert len(said) == 1 and said[0].account_id == account.pk  # once per account and name, not per frame
