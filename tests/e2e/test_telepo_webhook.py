"""A simulated Telepo call, end to end: webhooks to real daphne, a card on the right agent's console
websocket, and the call uploaded to the simulated retailCRM exactly once."""

from __future__ import annotations

import time

import pytest

from crm_sync import domain as crm_domain
from crm_sync.models import RetailCrmIntegration
from telephony.models import Call, PbxAccount
from telephony.providers.telepo.tasks import reconcile_telepo_accounts_task
from tests.factories import make_account, make_agent, make_terminal
from tests.support.consoles import Console
from tests.support.processes import wait_for
from tests.support.retailcrm_sim import API_KEY, RetailCrmControl
from tests.support.telepo_sim import DOMAIN, TICKET, TelepoControl

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ALICE, BOB = "alice@organization.org", "bob@organization.org"
SECRET = "whsec-e2e-5b1d"
# What the worker does after a webhook (the snapshot, the reconcile) waits behind its queue: on a 2-core
# machine running the suite three ways next to other work (load average 7), 10 s was once not enough.
SETTLE_S = 30


def uploaded(crm, external_id: str) -> list[dict]:
    return [c for upload in crm.uploads() for c in upload["calls"] if c.get("externalId") == external_id]


def telepo_hub(hub):
    """A running hub, a Telepo organisation posting to it, and its account with Alice's and Bob's users."""
    hub.start(workers=1, web=True)
    telepo = TelepoControl(hub.sim_url)
    telepo.add_ticket(TICKET, DOMAIN)
    telepo.add_user(ALICE, email="alice@organization.com", number="+12202", devices={"10.alice_phone": "SOFT"})
    telepo.add_user(BOB, email="bob@organization.com", number="+12203")
    telepo.set_webhook_url(f"{hub.web_url}/api/telepo/webhook/{SECRET}")
    account = make_account(kind=PbxAccount.Kind.TELEPO, base_url=hub.sim_url, enterprise=DOMAIN, login="",
                           password="", api_token=TICKET, webhook_secret=SECRET, default_region="FR")
    alice, bob = make_agent("alice"), make_agent("bob")
    make_terminal(account, pbx_id=ALICE, extension="10.alice_phone", agent=alice)
    make_terminal(account, pbx_id=BOB, agent=bob)
    return telepo, account, alice, bob


def stored(account, call_id: str, **state) -> Call | None:
    return Call.objects.filter(account=account, pbx_call_id=call_id, **state).first()


def test_it_pops_a_telepo_call_for_the_right_agent_and_uploads_it_to_retailcrm_exactly_once(hub):
    telepo, account, alice, bob = telepo_hub(hub)
    crm = RetailCrmControl(hub.sim_url)
    crm.add_api_key(API_KEY)
    integration = RetailCrmIntegration.objects.create(name="shop", crm_url=hub.sim_url, api_key=API_KEY,
                                                      module_code="ctihub", client_id="client-id-0123456789")
    crm_domain.register_integration(integration)
    alice_console, bob_console = Console(hub, alice), Console(hub, bob)

    call = telepo.incoming(ALICE, "+33612345678", displayName="Bob Smith")
    ringing = alice_console.card("ringing")
    assert (ringing["agent"], ringing["remote_number"], ringing["direction"]) == (alice.pk, "+33612345678", "in")
    assert "answer" in ringing["actions"]

    telepo.answer(call["callId"])
    talking = alice_console.card("talking")
    assert alice_console.act(talking["id"], "hold")["ok"]  # through daphne, the provider and the PBX
    assert "resume" in alice_console.card("held")["actions"]
    assert telepo.call(call["callId"])["status"] == "HELD"
    telepo.hangup(call["callId"])
    ended = alice_console.card("ended")
    assert ended["answered"] and ended["end_cause"] == "hangup"

    external_id = f"ctihub-{ended['id']}"
    wait_for(lambda: uploaded(crm, external_id), 30, what="the call in retailCRM's history")
    time.sleep(3)  # the snapshot reconciles and CRM tasks the webhooks queued have all run by now
    (record,) = uploaded(crm, external_id)
    assert (record["type"], record["phone"], record["result"]) == ("in", "+33612345678", "answered")
    assert list(crm.calls()) == [external_id]
    assert [d["status"] for d in telepo.deliveries()] == [200, 200, 200]

    stored = Call.objects.get(pk=ended["id"])
    assert (stored.agent, stored.pbx_call_id, stored.last_seq, stored.state) == (alice, call["callId"], 3, "ended")
    assert bob_console.cards(listen=1) == []  # Bob's console never heard of Alice's call
    alice_console.close()
    bob_console.close()


def test_it_ends_calls_right_through_duplicated_reordered_and_lost_webhooks(hub):
    telepo, account, alice, _ = telepo_hub(hub)

    # Every message twice, and the whole call delivered backwards: the end comes first.
    telepo.hold_webhooks()
    telepo.duplicate_next(3)
    first = telepo.incoming(ALICE, "+33611111111")["callId"]
    telepo.answer(first)
    telepo.hangup(first)
    telepo.release_webhooks("reverse")
    telepo.wait_delivered(6)
    call = wait_for(lambda: stored(account, first, state="ended"), SETTLE_S, what="the first call to end")
    assert [d["status"] for d in telepo.deliveries()] == [200] * 6
    assert (call.agent, call.end_cause, call.last_seq, call.answered_at is not None) == (alice, "hangup", 3, True)
    # The end and the answer it implies; the CONFIRMED and EARLY that came late changed nothing. (Webhook
    # events only: on a busy machine the worker's start-up reconcile, worker_ready, can run while the
    # webhooks are held and read the call from Telepo's snapshot first, a snapshot event of its own.)
    webhook_events = [e.payload["seq_num"] for e in call.events.order_by("id") if "seq_num" in e.payload]
    assert webhook_events == [3, 3]

    # The TERMINATED is lost: the call stays up until the periodic snapshot reconcile, run by the worker.
    telepo.drop_next(1, state="TERMINATED")
    second = telepo.incoming(ALICE, "+33622222222")["callId"]
    telepo.answer(second)
    wait_for(lambda: stored(account, second, state="talking", state_token__gt=""), SETTLE_S,
             what="the snapshot after the answer")
    telepo.hangup(second)
    time.sleep(1.5)
    assert stored(account, second).state == "talking"
    reconcile_telepo_accounts_task.delay()
    ended = wait_for(lambda: stored(account, second, state="ended"), SETTLE_S, what="the reconcile to end the call")
    assert (ended.end_cause, ended.answered_at is not None, ended.last_seq) == ("hangup", True, 2)
