"""The exact payloads: registration, call events and uploads, field by field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from crm_sync.domain import registration_payload
from crm_sync.models import ExternalPhone
from crm_sync.retailcrm import payloads
from crm_sync.tests.conftest import fixture_json
from telephony import updates as u
from telephony.models import Call
from tests.factories import make_account, make_agent, make_call

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 4, 9, 15, 30, tzinfo=UTC)


@pytest.fixture
def agent():
    return make_agent(extension_code="100", retailcrm_user_id="7")


def ended_call(agent=None, **fields) -> Call:
    defaults = dict(
        direction=Call.Direction.INBOUND, state=Call.State.ENDED, remote_number_e164="+33412345670",
        remote_number_raw="0412345670", created_at=T0, answered_at=T0 + timedelta(seconds=12),
        ended_at=T0 + timedelta(seconds=95), ringing_ms=12400, talking_ms=82600, end_cause=u.END_HANGUP,
        agent=agent,
    )
    return make_call(make_account(), **{**defaults, **fields})


def test_it_builds_the_registration_payload_field_by_field(integration):
    make_agent(extension_code="200", retailcrm_user_id="2")
    make_agent(extension_code="100", retailcrm_user_id="1")
    make_agent(extension_code="300")  # no retailCRM user: retailCRM cannot know this code
    make_agent(extension_code="", retailcrm_user_id="4")  # no code: nothing to dial
    ExternalPhone.objects.create(integration=integration, site_code="shop2", phone="+74998888888")
    ExternalPhone.objects.create(integration=integration, site_code="shop1", phone="+74999999999")

    expected = json.loads(json.dumps(fixture_json("expected_registration.json")).replace("{pk}", str(integration.pk)))
    assert registration_payload(integration) == expected


def test_it_registers_with_every_key_of_the_spec_example(integration):
    spec = fixture_json("spec_registration_example.json")
    ours = registration_payload(integration)
    assert set(spec) <= set(ours)
    assert set(spec["integrations"]["telephony"]) <= set(ours["integrations"]["telephony"])


def test_it_registers_a_disabled_integration_as_inactive(integration):
    integration.enabled = False
    assert registration_payload(integration)["active"] is False


def test_it_builds_the_in_event_when_an_incoming_call_rings(agent):
    call = ended_call(agent, state=Call.State.RINGING, answered_at=None, ended_at=None)
    event = payloads.start_event(call, site="shop1", external_phone="+74999999999")
    assert event == {
        "type": "in",
        "phone": "+33412345670",
        "codes": ["100"],
        "userIds": [7],
        "site": "shop1",
        "externalPhone": "+74999999999",
        "callExternalId": f"ctihub-{call.pk}",
    }
    assert set(fixture_json("spec_call_event_example.json")) <= set(event)


def test_it_builds_the_out_event_when_an_outgoing_call_dials_and_leaves_out_what_it_does_not_know(agent):
    agent.retailcrm_user_id = ""
    call = ended_call(agent, direction=Call.Direction.OUTBOUND, state=Call.State.DIALING, remote_number_e164="",
                      remote_number_raw="0612")
    assert payloads.start_event(call) == {
        "type": "out", "phone": "0612", "codes": ["100"], "callExternalId": f"ctihub-{call.pk}"}


def test_it_builds_the_hangup_event_with_its_status(agent):
    call = ended_call(agent)
    assert payloads.hangup_event(call, site="shop1") == {
        "type": "hangup",
        "phone": "+33412345670",
        "codes": ["100"],
        "userIds": [7],
        "site": "shop1",
        "callExternalId": f"ctihub-{call.pk}",
        "hangupStatus": "answered",
    }


@pytest.mark.parametrize("end_cause, answered, hangup_status, result", [
    (u.END_HANGUP, True, "answered", "answered"),
    (u.END_TRANSFERRED, True, "answered", "answered"),
    (u.END_BUSY, False, "busy", "busy"),
    (u.END_REJECTED, False, "busy", "busy"),
    (u.END_NO_ANSWER, False, "no answered", "no answer"),
    (u.END_CANCELLED, False, "cancel", "no answer"),
    (u.END_HANGUP, False, "cancel", "no answer"),
    (u.END_ANSWERED_ELSEWHERE, False, "cancel", "no answer"),
    (u.END_UNAVAILABLE, False, "failed", "failed"),
    (u.END_FAILED, False, "failed", "failed"),
    (u.END_SWEPT, False, "failed", "unknown"),
    (u.END_SWEPT, True, "answered", "answered"),  # seen answered before the PBX went silent
    ("something new", False, "failed", "unknown"),
])
def test_it_maps_every_end_cause_to_hangup_status_and_upload_result(end_cause, answered, hangup_status, result):
    call = ended_call(end_cause=end_cause, answered_at=T0 if answered else None)
    assert payloads.hangup_status(call) == hangup_status
    assert payloads.upload_result(call) == result
    assert hangup_status in ("answered", "busy", "cancel", "failed", "no answered")
    assert result in ("answered", "busy", "failed", "no answer", "not allowed", "unknown")


def test_it_builds_an_upload_record_field_by_field(agent):
    call = ended_call(agent)
    record = payloads.upload_record(
        call, time_zone="Europe/Moscow", site="shop1", external_phone="+74999999999",
        record_url="https://hub.example.com/api/retailcrm/records/x",
    )
    assert record == {
        "date": "2026-03-04 12:15:30",  # 09:15:30 UTC is 12:15:30 in Moscow
        "type": "in",
        "phone": "+33412345670",
        "code": "100",
        "userId": 7,
        "result": "answered",
        "duration": 83,  # 82.6 s of talk
        "durationWaiting": 12,  # 12.4 s of ringing
        "externalId": f"ctihub-{call.pk}",
        "recordUrl": "https://hub.example.com/api/retailcrm/records/x",
        "externalPhone": "+74999999999",
        "site": "shop1",
    }


def test_it_uploads_an_unanswered_outgoing_call_in_the_hubs_time_zone_without_unknown_fields(settings):
    settings.TIME_ZONE = "UTC"
    call = ended_call(direction=Call.Direction.OUTBOUND, answered_at=None, talking_ms=0, ringing_ms=30000,
                      end_cause=u.END_NO_ANSWER)
    assert payloads.upload_record(call) == {
        "date": "2026-03-04 09:15:30", "type": "out", "phone": "+33412345670", "result": "no answer",
        "duration": 0, "durationWaiting": 30, "externalId": f"ctihub-{call.pk}",
    }
