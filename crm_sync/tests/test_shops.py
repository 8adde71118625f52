"""The shop of an incoming myRCC or Telepo call: the number dialled, mapped to the integration's shops (issue 14, 6).

Through the real path: the simulated PBX's directory and frames (myRCC) or webhooks and
snapshots (Telepo), the real parsers and domain, then the events and the upload to the
simulated retailCRM. No Celery: the sync is called as its task would.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from django.test import Client

from crm_sync import domain as crm_domain
from crm_sync.models import ExternalPhone
from simulator.istra import myrcc as sim_myrcc
from telephony import control
from telephony.domain import apply_call_updates
from telephony.models import Call, PbxAccount, Terminal
from telephony.providers.istra_myrcc.frames import parse_myrcc_frame
from telephony.providers.telepo.reconcile import reconcile_user
from tests.factories import make_account, make_agent, make_terminal
from tests.support.telepo_sim import DOMAIN, TICKET

pytestmark = pytest.mark.django_db
SHOP1, SHOP2 = "+74999999999", "+74998888888"
ONE_NUMBER, TWO_NUMBERS = "897778778", "897778779"
ALICE = "alice@organization.org"
SECRET = "whsec-shops-0123"


@pytest.fixture
def shops(integration, crm):
    crm.add_user(7, firstName="Ann")
    crm.add_site("shop1")
    crm.add_site("shop2")
    ExternalPhone.objects.create(integration=integration, site_code="shop1", phone=SHOP1)
    ExternalPhone.objects.create(integration=integration, site_code="shop2", phone=SHOP2)
    agent = make_agent("ann", extension_code="100", retailcrm_user_id="7")
    crm_domain.register_integration(integration)
    return SimpleNamespace(integration=integration, crm=crm, agent=agent)


# --- myRCC: the extension's one PSTN number ---------------------------------------------------------


@pytest.fixture
def rcc(shops, running_simulator):
    istra = running_simulator.state.istra
    istra.reset()
    istra.add_user("rccadmin", "s3cret", enterprise="acme", myrcc=True)
    istra.add_extension(ONE_NUMBER, "101", enterprise="acme", label="Ann", pstn_numbers=[SHOP1])
    istra.add_extension(TWO_NUMBERS, "102", enterprise="acme", label="Ann 2", pstn_numbers=[SHOP1, SHOP2])
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=running_simulator.istra_base,
                           login="rccadmin", password="s3cret", enterprise="acme", default_region="FR")
    control.sync_terminals(account)  # the directory's pstnNumbers, as the admin action stores them
    Terminal.objects.filter(account=account).update(agent=shops.agent)
    yield SimpleNamespace(**vars(shops), istra=istra, account=account)
    control.forget_providers()
    istra.reset()


def ring_on_myrcc(rcc, extension_id: str) -> Call:
    """A caller rings the extension: the frame the simulator pushes, read and applied as the listener does."""
    line = rcc.istra.incoming_call(extension_id, "0612345678", label="Smith")
    frame = json.dumps({"listenerName": "CallLines", "item": [sim_myrcc.snapshot(rcc.istra, line)]})
    apply_call_updates(parse_myrcc_frame(frame, rcc.account.pk))
    return Call.objects.get(account=rcc.account, pbx_call_id=line.line_id)


def test_it_names_the_shop_of_the_one_pstn_number_of_the_myrcc_extension_a_call_rang(rcc):
    assert Terminal.objects.get(account=rcc.account, pbx_id=ONE_NUMBER).pstn_numbers == [SHOP1]
    call = ring_on_myrcc(rcc, ONE_NUMBER)
    assert crm_domain.sync_call(call.pk).sent == ["in"]
    [event] = rcc.crm.events()
    assert event == {"type": "in", "phone": "+33612345678", "codes": ["100"], "userIds": [7], "site": "shop1",
                     "externalPhone": SHOP1, "callExternalId": f"ctihub-{call.pk}"}


def test_it_names_no_shop_for_an_extension_with_several_pstn_numbers(rcc):
    # myRCC's call line does not say which of them was dialled: no shop rather than perhaps the wrong one.
    call = ring_on_myrcc(rcc, TWO_NUMBERS)
    crm_domain.sync_call(call.pk)
    [event] = rcc.crm.events()
    assert "externalPhone" not in event and "site" not in event


# --- Telepo: the number the caller dialled ------------------------------------------------------------


@pytest.fixture
def telepo(shops, running_simulator, monkeypatch):
    world = running_simulator.state.telepo
    world.reset()
    world.add_ticket(TICKET, DOMAIN)
    monkeypatch.setattr("telephony.providers.telepo.tasks.enqueue", lambda *args, **kwargs: True)
    account = make_account(kind=PbxAccount.Kind.TELEPO, base_url=running_simulator.url, enterprise=DOMAIN,
                           login="", password="", api_token=TICKET, webhook_secret=SECRET, default_region="FR")
    make_terminal(account, pbx_id=ALICE, extension="10.soft", label="Alice", agent=shops.agent)
    yield SimpleNamespace(**vars(shops), world=world, account=account)
    control.forget_providers()
    world.reset()


def post_webhooks(telepo, call_id: str) -> None:
    """Telepo's messages about the call not posted yet, posted to the webhook as Telepo does."""
    posted = getattr(telepo, "posted", set())
    for message in telepo.world.sent:
        key = (message["call_id"], message["seq_num"])
        if message["call_id"] == call_id and key not in posted:
            response = Client().post(f"/api/telepo/webhook/{SECRET}", data=json.dumps(message),
                                     content_type="application/json")
            assert response.status_code == 200, response.content
            posted.add(key)
    telepo.posted = posted


def test_it_names_the_shop_of_the_telepo_users_number_a_call_came_in_on(telepo):
    telepo.world.add_user(ALICE, DOMAIN, number=SHOP1, devices={"10.soft": "SOFT"})  # the shop's line
    ringing = telepo.world.incoming_call(ALICE, "+33612345678", display_name="Smith")
    post_webhooks(telepo, ringing.call_id)
    call = Call.objects.get(account=telepo.account, pbx_call_id=ringing.call_id)
    crm_domain.sync_call(call.pk)
    [event] = telepo.crm.events()
    assert (event["type"], event["externalPhone"], event["site"]) == ("in", SHOP1, "shop1")


def test_it_names_the_shop_a_telepo_caller_dialled_before_the_call_was_sent_on_to_the_user(telepo):
    telepo.world.add_user(ALICE, DOMAIN, number="+33412345601", devices={"10.soft": "SOFT", "+33600000001": "MOBILE"})
    ringing = telepo.world.incoming_call(ALICE, "+33612345678", dialled=SHOP2)  # the switchboard sends it on
    post_webhooks(telepo, ringing.call_id)
    reconcile_user(telepo.account, ALICE)  # the snapshot the webhook asks for: its historyInfo names SHOP2
    call = Call.objects.get(account=telepo.account, pbx_call_id=ringing.call_id)
    assert call.external_phone == SHOP2
    telepo.world.answer(ringing.call_id)
    post_webhooks(telepo, ringing.call_id)  # later messages name Alice's own number again: it stays
    assert Call.objects.get(pk=call.pk).external_phone == SHOP2
    crm_domain.sync_call(call.pk)
    [event] = telepo.crm.events()
    assert (event["externalPhone"], event["site"]) == (SHOP2, "shop2")


def test_it_looks_up_a_terminals_dialled_number_once_yet_sees_an_edit_at_once(django_assert_num_queries):
    # Asked for every event and upload of a call that names no shop; "none" must be remembered too.
    from crm_sync.domain.shops import dialled_number

    terminal = make_terminal(make_account(default_region="FR"), pstn_numbers=[SHOP1, SHOP2])
    assert dialled_number(terminal.pk) == ""
    with django_assert_num_queries(0):
        assert dialled_number(terminal.pk) == ""
    terminal.pstn_numbers = ["01 49 99 99 99"]
    terminal.save()  # an admin's edit, or a directory sync
    assert dialled_number(terminal.pk) == "+33149999999"
