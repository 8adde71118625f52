"""A Telepo call the snapshot ended as missed before its answer came in (the webhooks lagged): retailCRM's
upload says answered, and retailCRM hears one start and one hangup event, no more.

Here, above telephony, because it needs the retailCRM integration; the provider side is in
``telephony/providers/telepo/tests/test_webhook.py`` (an answer learnt after the end).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from crm_sync import domain as crm_domain
from telephony import updates as u
from telephony.models import Call
from telephony.providers.telepo.reconcile import ABSENCE_GRACE, reconcile_user
from telephony.providers.telepo.tests.conftest import (  # noqa: F401 (fixtures)
    ALICE,
    SECRET,
    account,
    agent,
    terminal,
    world,
)

pytestmark = pytest.mark.django_db


def post(message: dict):
    answer = Client().post(f"/api/telepo/webhook/{SECRET}", data=json.dumps(message), content_type="application/json")
    assert answer.status_code == 200


def test_it_uploads_a_call_answered_after_the_snapshot_ended_it_as_answered_with_one_hangup_event(
    account, terminal, world, integration, crm, settings, monkeypatch
):
    monkeypatch.setattr("telephony.providers.telepo.tasks.enqueue", lambda task, *args, countdown=None: True)
    settings.RETAILCRM_VOICEMAIL_WAIT_SECONDS = 0  # a missed call's upload waits for nothing: due at once
    crm.add_user(1, firstName="Alice")
    crm_domain.register_integration(integration)
    terminal.agent.extension_code, terminal.agent.retailcrm_user_id = "100", "1"
    terminal.agent.save()
    sim_call = world.incoming_call(ALICE, "+33612345678")
    world.answer(sim_call.call_id)
    world.hangup(sim_call.call_id)
    trying, confirmed, terminated = [m for m in world.sent if m["call_id"] == sim_call.call_id]

    post(trying)
    call = Call.objects.get(pbx_call_id=sim_call.call_id)
    crm_domain.sync_call(call.pk)  # the start event
    # Telepo's webhooks lag past the grace: its snapshot no longer lists the call, which ends as missed.
    Call.objects.filter(pk=call.pk).update(updated_at=timezone.now() - ABSENCE_GRACE - timedelta(seconds=1))
    assert reconcile_user(account, ALICE).ended == 1
    assert Call.objects.get(pk=call.pk).end_cause == u.END_NO_ANSWER
    crm_domain.sync_call(call.pk)  # the hangup event, and the call into the outbox
    for message in (terminated, confirmed, terminated, confirmed):  # late, out of order, twice
        post(message)
        crm_domain.sync_call(call.pk)

    assert crm_domain.upload_outbox(integration.pk).uploaded == 1
    uploaded = crm.calls()[f"ctihub-{call.pk}"]
    assert uploaded["result"] == "answered"
    assert Counter(e["type"] for e in crm.events() if e.get("callExternalId") == f"ctihub-{call.pk}") == {
        "in": 1, "hangup": 1}
