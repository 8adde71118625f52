"""The core's plug-in points (telephony.plugins): what an app above telephony gets from it, and when."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from telephony import plugins
from telephony import updates as u
from telephony.cards import call_card, cards_of
from telephony.domain import apply_call_updates
from telephony.models import Call
from telephony.publish import publisher
from tests.factories import make_account, make_call, make_terminal

pytestmark = pytest.mark.django_db

T0 = timezone.now().replace(microsecond=0)


def frame(account, pbx_call_id, state, at):
    return u.CallUpdate(account_id=account.pk, pbx_call_id=pbx_call_id, state=state, kind=f"call-{state}",
                        payload={}, occurred_at=T0 + timedelta(seconds=at), direction=u.INBOUND)


def test_it_tells_the_plugins_of_a_bursts_calls_once_each_and_only_after_commit(
        committed, published, django_capture_on_commit_callbacks):
    account = make_account()
    burst = [frame(account, "-1", u.RINGING, 0), frame(account, "-2", u.RINGING, 0),
             frame(account, "-1", u.TALKING, 1)]
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            apply_call_updates(burst)
        assert committed == []  # not committed yet
    [sent] = committed
    first, second = Call.objects.get(pbx_call_id="-1"), Call.objects.get(pbx_call_id="-2")
    assert sorted(sent) == sorted([(first.pk, "talking"), (second.pk, "ringing")])


def test_it_hands_the_tasks_a_plugin_queues_to_the_publisher_with_the_cards_in_one_batch(
        monkeypatch, django_capture_on_commit_callbacks):
    account = make_account()
    batches = []

    def hand_over(messages, tasks, future):
        batches.append(([message["card"]["id"] for _groups, message in messages], list(tasks)))
        future.set_result(None)
        return future

    def receiver(sender, calls, **kwargs):
        publisher.queue_tasks([("hand-off", (call.pk,)) for call in calls])

    monkeypatch.setattr(publisher, "_hand_over", hand_over)
    plugins.calls_committed.connect(receiver, weak=False, dispatch_uid="test-hand-off")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            apply_call_updates([frame(account, "-1", u.RINGING, 0)])
    finally:
        plugins.calls_committed.disconnect(dispatch_uid="test-hand-off")
    call = Call.objects.get()
    assert batches == [([call.pk], [("hand-off", (call.pk,))])]


@pytest.fixture
def enricher():
    def shop_hours(calls):
        return {call.pk: {"shop_hours": f"call {call.pk}"} for call in calls}

    plugins.register_card_enricher(shop_hours)
    yield shop_hours
    plugins.unregister_card_enricher(shop_hours)


def test_it_puts_every_enrichers_fields_on_the_cards(enricher):
    account = make_account()
    calls = [make_call(account, pbx_call_id="-1"), make_call(account, pbx_call_id="-2")]
    cards = cards_of(calls)
    # The CRM side's enricher (crm_sync registers it when ready) and this one.
    assert [(card["crm"], card["shop_hours"]) for card in cards] == [(None, f"call {c.pk}") for c in calls]
    assert call_card(calls[0])["shop_hours"] == f"call {calls[0].pk}"
    assert "shop_hours" not in call_card(calls[0], extras={})


def test_it_asks_the_caller_id_presenters_in_turn_until_one_presents():
    terminal = make_terminal(make_account(), pbx_id="t1")
    asked = []

    def presenter(name, answer):
        def present(terminal, phone):
            asked.append((name, terminal.pbx_id, phone))
            return answer
        return present

    for name, answer in (("refuses", False), ("presents", True), ("never asked", True)):
        plugins.register_caller_id_presenter(name, presenter(name, answer))
    try:
        assert plugins.present_caller_id(terminal, "+33412345670") is True
    finally:
        for name in ("refuses", "presents", "never asked"):
            plugins.unregister_caller_id_presenter(name)
    # The End User API's presenter (registered when telephony is ready) found no End User account first.
    assert asked == [("refuses", "t1", "+33412345670"), ("presents", "t1", "+33412345670")]
    assert plugins.present_caller_id(terminal, "+33412345670") is False  # only the End User API's is left
