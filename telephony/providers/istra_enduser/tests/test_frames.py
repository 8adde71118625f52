"""The End User API's payloads (the spec's keys, as fixtures) read into values and call updates."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from telephony import updates as u
from telephony.providers.istra_enduser import frames
from telephony.providers.istra_enduser.tests.conftest import fixture_json
from telephony.updates import FrameRejected


def test_it_reads_the_notifications_snapshot_the_bind_answers():
    text = json.dumps(fixture_json("notifications_snapshot.json"))
    assert frames.parse_notification_frame(text) == frames.Counters(2, 1, 0)


def test_it_reads_a_pushed_counters_frame():
    counters = frames.parse_notification_frame(json.dumps(fixture_json("notification_frame.json")))
    assert counters.as_message() == {"unreadMissedCalls": 3, "unreadVoiceMails": 2, "unreadTextMessages": 1}


def test_it_reads_a_frame_whose_item_is_a_list_of_one_like_the_other_istra_frames():
    frame = fixture_json("notification_frame.json")
    frame["item"] = [frame["item"]]
    assert frames.parse_notification_frame(json.dumps(frame)).unread_voicemails == 2


def test_it_ignores_a_frame_about_another_model():
    assert frames.parse_notification_frame('{"listenerName": "x", "item": {"model": "v1/data/Other"}}') is None


@pytest.mark.parametrize("text", ['{"keepalive": "true"}', '{"keepalive": true, "status": "ok"}', "{}"])
def test_it_ignores_a_frame_that_is_neither_a_listeners_nor_counters(text):
    # A platform that answers each keep-alive the doc asks for every 30 s: rejected, it was a warning each time.
    assert frames.parse_notification_frame(text) is None


@pytest.mark.parametrize("text", ["not json", "[1]", '{"item": {"model": "v1/data/RestletApiSessionCounters"}}',
                                  '{"unreadVoiceMails": -1}', '{"unreadVoiceMails": "many"}',
                                  '{"item": [{"unreadVoiceMails": 1}, {"unreadVoiceMails": 2}]}'])
def test_it_rejects_frames_that_make_no_sense(text):
    with pytest.raises(FrameRejected):
        frames.parse_notification_frame(text)


def test_it_reads_voicemails_with_ids_as_strings_and_the_play_number():
    first, second = [frames.parse_voicemail(item) for item in fixture_json("voicemail_list.json")["items"]]
    assert first.id == "8967300633232582577"  # above 2**53: a float would change it
    assert first.received_at == datetime(2016, 2, 19, 17, 8, 45, tzinfo=UTC)
    assert (first.duration_seconds, first.read, first.internal) == (12, False, False)
    assert first.play_number == "555;lra=144;cd msgid=20160219170845749-313-144"
    assert first.callback_number == "00612345678"
    assert (second.internal, second.read, second.remote_label, second.priority) == (True, True, "John Doe", "urgent")


def test_it_rejects_a_voicemail_without_an_id():
    item = fixture_json("voicemail_list.json")["items"][0]
    del item["id"]
    with pytest.raises(FrameRejected):
        frames.parse_voicemail(item)


@pytest.mark.parametrize(("fields", "read"), [
    ({"type": True}, ("internal", True)),  # "A flag to indicate the call is internal or external"
    ({"type": "false"}, ("internal", False)),
    ({"priority": 1}, ("priority", "1")),
    ({"durationSecond": "12.5"}, ("duration_seconds", 12)),
    ({"read": "TRUE"}, ("read", True)),
])
def test_it_reads_the_values_the_docs_words_allow_in_a_voicemail(fields, read):
    item = {**fixture_json("voicemail_list.json")["items"][0], **fields}
    unread = []
    attribute, value = read
    assert getattr(frames.parse_voicemail(item, unread), attribute) == value
    assert unread == []


@pytest.mark.parametrize(("fields", "absent"), [
    ({"timestamp": "2016-02-19T17:08:45Z"}, ("received_at", None)),
    ({"durationSecond": "-1"}, ("duration_seconds", 0)),
    ({"remoteLabel": ["John", "Doe"]}, ("remote_label", "")),
    ({"read": "maybe"}, ("read", False)),
    ({"playNumber": {"pilot": "555"}}, ("play_number", "")),
])
def test_it_reads_a_voicemail_field_it_cannot_read_as_absent_and_says_why(fields, absent):
    item = {**fixture_json("voicemail_list.json")["items"][0], **fields}
    unread = []
    voicemail = frames.parse_voicemail(item, unread)
    attribute, value = absent
    assert (voicemail.id, getattr(voicemail, attribute)) == ("8967300633232582577", value)
    (reason,) = unread
    assert next(iter(fields)) in reason


def test_it_turns_a_missed_call_into_one_ended_unanswered_call():
    entry = frames.parse_history_entry(fixture_json("call_history.json")["items"][0])
    [update] = frames.history_updates(entry, account_id=7, terminal_pbx_id="5985841581756135023")
    assert update.pbx_call_id == "history:9007199254740993123"
    assert (update.state, update.direction, update.is_internal) == (u.ENDED, u.INBOUND, False)
    assert update.started_at == datetime(2016, 2, 19, 17, 8, 20, tzinfo=UTC)
    assert update.occurred_at == datetime(2016, 2, 19, 17, 8, 41, tzinfo=UTC)
    assert (update.ringing_ms, update.talking_ms, update.end_cause) == (21000, 0, u.END_NO_ANSWER)
    assert update.answered_at is None
    assert update.remote_number == "0612345678"
    assert update.remote_label == ""  # the label only repeats the number


def test_it_turns_an_answered_call_into_talking_then_ended_so_the_answer_time_is_kept():
    entry = frames.parse_history_entry(fixture_json("call_history.json")["items"][1])
    talking, ended = frames.history_updates(entry, account_id=7, terminal_pbx_id=None)
    assert (talking.state, ended.state) == (u.TALKING, u.ENDED)
    assert talking.answered_at == ended.answered_at == datetime(2016, 2, 19, 13, 53, 26, tzinfo=UTC)
    assert ended.occurred_at == datetime(2016, 2, 19, 13, 55, 1, tzinfo=UTC)
    assert (ended.direction, ended.talking_ms, ended.end_cause) == (u.OUTBOUND, 95000, u.END_HANGUP)
    assert talking.frame_id != ended.frame_id  # two events of the same call, each stored once
    assert ended.remote_label == "Boulangerie Martin"


def test_it_marks_a_call_with_an_internal_station_internal():
    entry = frames.parse_history_entry(fixture_json("call_history.json")["items"][2])
    assert entry.internal and entry.user_number == "144"


def test_it_reads_a_millisecond_timestamp_too():
    item = {**fixture_json("call_history.json")["items"][0], "timestamp": "1455901700000"}
    assert frames.parse_history_entry(item).started_at == datetime(2016, 2, 19, 17, 8, 20, tzinfo=UTC)


@pytest.mark.parametrize("change", [{"callHistoryId": None, "restUri": None}, {"timestamp": "yesterday"},
                                    {"timestamp": None}, {"isMissed": None}, {"isIncoming": "maybe"}])
def test_it_rejects_history_entries_it_cannot_date_or_classify(change):
    item = fixture_json("call_history.json")["items"][0]
    for key, value in change.items():
        if value is None:
            item.pop(key, None)
        else:
            item[key] = value
    with pytest.raises(FrameRejected):
        frames.parse_history_entry(item)
