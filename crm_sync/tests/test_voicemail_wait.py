"""The upload of a missed call waits for the voicemail its caller is still leaving (issue 14, point 5).

Against the simulated retailCRM and the simulated Istra End User voicemail (the real
lookup, the real upload); no Celery: the sweep and the drain are called as beat and the
task would. Time passes by moving the call and its outbox row into the past.
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests
from django.utils import timezone

from crm_sync import domain as crm_domain
from crm_sync.models import CrmCallSync
from telephony import control
from telephony import updates as u
from telephony.models import Call, PbxAccount
from tests.factories import make_account, make_agent, make_call, make_terminal

pytestmark = pytest.mark.django_db
ENDUSER_TERMINAL = "5985841581756135023"
CALLER = "+33612345678"
LOOK = 10  # seconds between two looks at the voicemail (crm_domain.RECORD_RECHECK)


@pytest.fixture
def world(integration, crm, running_simulator, settings):
    settings.RETAILCRM_VOICEMAIL_WAIT_SECONDS = 180
    istra = running_simulator.state.istra
    istra.reset()
    crm.add_user(7, firstName="Ann")
    crm.add_user(8, firstName="Bob")
    agent = make_agent("chatfield", extension_code="100", retailcrm_user_id="7")
    # The agent's own End User account: its voicemail is where a missed caller's message lands.
    istra.add_user("chatfield", "0000")
    istra.add_extension(ENDUSER_TERMINAL, "144", owner="chatfield")
    enduser = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=running_simulator.istra_base,
                           login="chatfield", password="0000", default_region="FR")
    make_terminal(enduser, pbx_id=ENDUSER_TERMINAL, agent=agent)
    # The calls come from the enterprise's account (myRCC), on the agent's extension there.
    rcc = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=running_simulator.istra_base, enterprise="e1",
                       default_region="FR")
    terminal = make_terminal(rcc, agent=agent, extension="104")
    crm_domain.register_integration(integration)
    yield SimpleNamespace(sim=running_simulator, integration=integration, crm=crm, agent=agent, rcc=rcc,
                          terminal=terminal)
    control.forget_providers()
    istra.reset()


def finished_call(world, *, answered=False, direction=Call.Direction.INBOUND, agent="world") -> Call:
    """A call that rang 20 s and ended just now, as the domain leaves it."""
    now = timezone.now()
    return make_call(
        world.rcc, terminal=world.terminal, agent=world.agent if agent == "world" else agent, direction=direction,
        state=Call.State.ENDED, remote_number_e164=CALLER, remote_number_raw="0612345678",
        created_at=now - timedelta(seconds=30 if answered else 20), ended_at=now,
        answered_at=now - timedelta(seconds=10) if answered else None,
        end_cause=u.END_HANGUP if answered else u.END_NO_ANSWER, ringing_ms=20000, talking_ms=10000 if answered else 0,
    )


def leave_voicemail(world, at) -> None:
    response = requests.post(f"{world.sim.url}/_sim/istra/enduser/voicemails", timeout=5,
                             json={"login": "chatfield", "from": "0612345678", "timestamp": int(at.timestamp())})
    assert response.status_code == 201, response.text


def time_passes(seconds: float) -> None:
    """Everything that happened moves ``seconds`` into the past (the calls, their outbox rows)."""
    delta = timedelta(seconds=seconds)
    for call in Call.objects.all():
        Call.objects.filter(pk=call.pk).update(
            created_at=call.created_at - delta, ended_at=call.ended_at and call.ended_at - delta,
            answered_at=call.answered_at and call.answered_at - delta,
        )
    for row in CrmCallSync.objects.all():
        CrmCallSync.objects.filter(pk=row.pk).update(**{
            name: getattr(row, name) - delta
            for name in ("created_at", "outbox_at", "upload_next_at", "record_wait_until", "in_event_sent_at",
                         "hangup_event_sent_at")
            if getattr(row, name) is not None
        })


def beat(world) -> crm_domain.UploadReport:
    """What beat and the drain it queues do: the sweep finds the due outbox, the drain uploads it."""
    report = crm_domain.sweep()
    if world.integration.pk not in report.integrations:
        return crm_domain.UploadReport()
    return crm_domain.upload_outbox(world.integration.pk)


def uploaded_records(world) -> list[dict]:
    return [record for upload in world.crm.uploads() for record in upload["calls"]]


def test_it_uploads_a_missed_call_once_with_the_voicemail_left_5_s_after_it_ended(world, client):
    call = finished_call(world)
    crm_domain.sync_call(call.pk)
    assert crm_domain.upload_outbox(world.integration.pk).uploaded == 0  # the caller is still recording
    assert uploaded_records(world) == []
    row = CrmCallSync.objects.get(call=call)
    assert row.record_wait_until == call.ended_at + timedelta(seconds=180)

    leave_voicemail(world, call.ended_at + timedelta(seconds=5))
    time_passes(LOOK)
    assert beat(world).uploaded == 1  # the next look finds it: no need to wait out the 180 s

    [record] = uploaded_records(world)
    assert record["externalId"] == f"ctihub-{call.pk}" and record["result"] == "no answer"
    response = client.get(record["recordUrl"].removeprefix("https://hub.example.com"))
    assert response.status_code == 200 and b"".join(response.streaming_content).startswith(b"OggS")

    time_passes(200)
    beat(world)
    assert len(uploaded_records(world)) == 1  # once
    assert Call.objects.get(pk=call.pk).crm_sync_state == Call.CrmSync.SYNCED


def test_it_uploads_a_missed_call_once_without_record_url_once_the_wait_is_over_when_no_voicemail_comes(world):
    call = finished_call(world)
    crm_domain.sync_call(call.pk)
    looks = 0
    for _ in range(17):  # 170 s of looks every 10 s: nothing yet, nothing uploaded
        time_passes(LOOK)
        report = beat(world)
        looks += report.held
        assert report.uploaded == 0
    assert uploaded_records(world) == [] and looks == 17
    assert Call.objects.get(pk=call.pk).crm_sync_state == Call.CrmSync.PENDING

    time_passes(LOOK)  # 180 s after the call ended
    assert beat(world).uploaded == 1
    [record] = uploaded_records(world)
    assert record["externalId"] == f"ctihub-{call.pk}" and "recordUrl" not in record

    time_passes(60)
    beat(world)
    assert len(uploaded_records(world)) == 1


def test_it_holds_only_missed_incoming_calls_that_can_have_a_voicemail(world):
    answered = finished_call(world, answered=True)
    outgoing = finished_call(world, direction=Call.Direction.OUTBOUND)
    no_enduser = make_agent("bob", extension_code="101", retailcrm_user_id="8")
    make_terminal(world.rcc, agent=no_enduser, extension="105")
    elsewhere = finished_call(world, agent=no_enduser)  # no End User account: no voicemail to wait for
    missed = finished_call(world)
    for call in (answered, outgoing, elsewhere, missed):
        crm_domain.sync_call(call.pk)
    report = crm_domain.upload_outbox(world.integration.pk)
    assert report.uploaded == 3
    assert sorted(r["externalId"] for r in uploaded_records(world)) == sorted(
        f"ctihub-{c.pk}" for c in (answered, outgoing, elsewhere))
    assert CrmCallSync.objects.get(call=missed).uploaded_at is None  # waits for its voicemail
    assert list(CrmCallSync.objects.filter(record_wait_until__isnull=False).values_list("call_id", flat=True)) == [
        missed.pk]


def test_it_does_not_wait_when_the_wait_is_set_to_zero(world, settings):
    settings.RETAILCRM_VOICEMAIL_WAIT_SECONDS = 0
    call = finished_call(world)
    crm_domain.sync_call(call.pk)
    assert crm_domain.upload_outbox(world.integration.pk).uploaded == 1
