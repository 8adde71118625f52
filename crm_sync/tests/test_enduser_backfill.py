"""A call only the End User history saw (backfilled) reaches retailCRM's call history once.

The CRM side over the End User provider's backfill (the layer above it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests

from crm_sync import domain as crm_domain
from telephony.models import Call, PbxAccount
from telephony.providers.istra_enduser.backfill import backfill_account
from telephony.providers.istra_enduser.tasks import backfill_account_task
from telephony.providers.istra_enduser.tests.test_backfill import TERMINAL, entry, socket_saw_ring
from tests.factories import make_account, make_agent, make_terminal
from tests.simulator.conftest import running_simulator, sim  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


def test_it_backfills_from_the_pbx_history_and_the_call_reaches_retailcrm_once(
    sim, integration, crm, queued, django_capture_on_commit_callbacks,  # noqa: F811
):
    crm.add_user(7, firstName="Ann")
    world = sim.state.istra
    world.add_user("chatfield", "0000")
    world.add_extension(TERMINAL, "144", label="Desk", owner="chatfield")
    agent = make_agent(extension_code="144", retailcrm_user_id="7")
    enduser = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=sim.istra_base, login="chatfield",
                           password="0000", default_region="FR")
    make_terminal(enduser, pbx_id=TERMINAL, agent=agent)
    crm_domain.register_integration(integration)
    ten_minutes_ago = int((datetime.now(UTC) - timedelta(minutes=10)).timestamp())
    added = requests.post(f"{sim.url}/_sim/istra/enduser/history", timeout=5, json={
        "login": "chatfield", "remoteNumber": "0612345678", "isIncoming": True, "isMissed": True,
        "timestamp": ten_minutes_ago,
    })
    assert added.status_code == 201

    with django_capture_on_commit_callbacks(execute=True):
        report = backfill_account_task(enduser.pk)
    with django_capture_on_commit_callbacks(execute=True):
        again = backfill_account_task(enduser.pk)
    assert (report["created"], again["created"], again["already_backfilled"]) == (1, 0, 1)
    [call] = Call.objects.filter(account=enduser)
    assert ("sync_call_task", (call.pk,)) in queued

    sync = crm_domain.sync_call(call.pk)
    assert sync.sent == []  # the call ended long ago: no pop-up in retailCRM, only the history
    crm_domain.upload_outbox(integration.pk)
    crm_domain.upload_outbox(integration.pk)
    uploaded = [record for upload in crm.uploads() for record in upload["calls"]]
    assert len(uploaded) == 1  # once, although the backfill ran twice and the outbox was drained twice
    [stored] = crm.calls().values()
    assert stored["phone"].endswith("612345678") and stored["type"] == "in"


def test_a_call_ended_from_the_history_gets_its_hangup_event_and_one_upload(
    integration, crm, queued, django_capture_on_commit_callbacks,  # noqa: F811
):
    crm.add_user(7, firstName="Ann")
    agent = make_agent(extension_code="144", retailcrm_user_id="7")
    enduser = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, default_region="FR")
    make_terminal(enduser, pbx_id=TERMINAL, agent=agent)
    mycrm = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, default_region="FR")
    socket_terminal = make_terminal(mycrm, pbx_id=TERMINAL, agent=agent)
    crm_domain.register_integration(integration)
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    with django_capture_on_commit_callbacks(execute=True):
        call = socket_saw_ring(mycrm, socket_terminal, started)
    crm_domain.sync_call(call.pk)  # its pop-up went out while it rang
    queued.clear()

    with django_capture_on_commit_callbacks(execute=True):
        report = backfill_account(enduser, [entry(1, started, missed=False, ring=4, talk=42)])
    assert report.ended_live == [call.pk]
    assert ("sync_call_task", (call.pk,)) in queued  # handed to the CRM side like any ended call
    crm_domain.sync_call(call.pk)
    crm_domain.upload_outbox(integration.pk)
    crm_domain.upload_outbox(integration.pk)
    assert [(e["type"], e.get("hangupStatus")) for e in crm.events()] == [("in", None), ("hangup", "answered")]
    uploaded = [record for upload in crm.uploads() for record in upload["calls"]]
    assert [(r["externalId"], r["result"], r["duration"], r["durationWaiting"]) for r in uploaded] == [
        (f"ctihub-{call.pk}", "answered", 42, 4)]
