"""A missed call's voicemail as its retailCRM recordUrl, against the simulated PBX."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests

from crm_sync import recordings
from telephony import control
from telephony.models import Call, PbxAccount
from tests.factories import make_account, make_agent, make_call, make_terminal
from tests.simulator.conftest import running_simulator, sim  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db
TERMINAL = "5985841581756135023"
LEFT_AT = datetime(2026, 11, 30, 9, 0, 30, tzinfo=UTC)


@pytest.fixture
def world(sim):
    istra = sim.state.istra
    istra.add_user("chatfield", "0000")
    istra.add_extension(TERMINAL, "144", owner="chatfield")
    agent = make_agent("chatfield")
    enduser = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=sim.istra_base, login="chatfield",
                           password="0000", default_region="FR")
    make_terminal(enduser, pbx_id=TERMINAL, agent=agent)
    rcc = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=sim.istra_base, enterprise="e1")
    yield sim, agent, rcc
    control.forget_providers()


def leave(sim, caller: str, at: datetime) -> dict:
    response = requests.post(f"{sim.url}/_sim/istra/enduser/voicemails", timeout=5,
                             json={"login": "chatfield", "from": caller, "timestamp": int(at.timestamp())})
    assert response.status_code == 201, response.text
    return response.json()


def missed_call(rcc, agent, **fields) -> Call:
    defaults = dict(agent=agent, direction=Call.Direction.INBOUND, state=Call.State.ENDED,
                    remote_number_e164="+33612345678", created_at=LEFT_AT - timedelta(seconds=25),
                    ended_at=LEFT_AT - timedelta(seconds=5))
    return make_call(rcc, **{**defaults, **fields})


def test_it_gives_a_missed_call_the_voicemail_its_caller_left_as_record_url(world, client, settings):
    sim, agent, rcc = world
    settings.PUBLIC_BASE_URL = "https://hub.example.com"
    leave(sim, "0612345678", LEFT_AT)
    call = missed_call(rcc, agent)
    url = recordings.record_url_for(call)
    assert url and url.startswith("https://hub.example.com/api/retailcrm/records/")
    response = client.get(url.removeprefix("https://hub.example.com"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/ogg"  # what the PBX says it is (spec 002, voicemail audio)
    assert b"".join(response.streaming_content).startswith(b"OggS")


def test_it_gives_no_record_url_to_answered_calls_or_another_callers_or_a_much_later_voicemail(world):
    sim, agent, rcc = world
    leave(sim, "0612345678", LEFT_AT)
    leave(sim, "0699999999", LEFT_AT + timedelta(hours=2))
    assert recordings.record_url_for(missed_call(rcc, agent, answered_at=LEFT_AT - timedelta(seconds=20))) is None
    assert recordings.record_url_for(missed_call(rcc, agent, remote_number_e164="+33611111111")) is None
    assert recordings.record_url_for(missed_call(rcc, agent, remote_number_e164="+33699999999")) is None
