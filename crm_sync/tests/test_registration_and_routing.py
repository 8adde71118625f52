"""Registering the module from the admin, re-registering on change, and responsible-manager routing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.contrib.messages import get_messages
from django.utils import timezone

from crm_sync import domain as crm_domain
from crm_sync.models import CrmCallSync, ExternalPhone
from telephony import updates as u
from telephony.domain import apply_call_update
from telephony.models import Call, PbxAccount
from tests.factories import make_account, make_agent, make_terminal

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/crm_sync/retailcrmintegration/"


def run_register_action(admin_client, integration) -> list[str]:
    response = admin_client.post(CHANGELIST, {"action": "register_module", "_selected_action": [integration.pk]},
                                 follow=True)
    assert response.status_code == 200
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_it_registers_from_the_admin_and_shows_what_retailcrm_does_not_know(admin_client, integration, crm):
    crm.add_user(7)
    crm.add_site("shop1")
    make_agent(extension_code="100", retailcrm_user_id="7")
    make_agent(extension_code="101", retailcrm_user_id="999")  # not a retailCRM user
    ExternalPhone.objects.create(integration=integration, site_code="nope", phone="+74999999999")
    [message] = run_register_action(admin_client, integration)
    assert message == f"{integration}: registered, but retailCRM reports unknown user ids 999; unknown site codes nope"
    [module] = crm.modules().values()
    codes = module["integrations"]["telephony"]["additionalCodes"]
    assert sorted((c["userId"], c["code"]) for c in codes) == [("7", "100"), ("999", "101")]
    page = admin_client.get(f"{CHANGELIST}{integration.pk}/change/").content.decode()
    assert "999" in page and "nope" in page and "fix the agents" in page


def test_it_says_in_the_admin_when_retailcrm_refuses_the_key(admin_client, integration, crm):
    crm.reset()  # our API key is unknown now
    [message] = run_register_action(admin_client, integration)
    assert message == f'{integration}: retailCRM refused POST /integration-modules/ctihub/edit (403): Wrong "apiKey" value.'
    integration.refresh_from_db()
    assert integration.last_error and integration.registered_at is None


@pytest.mark.django_db(transaction=True)
def test_it_re_registers_when_an_agents_code_or_a_shops_number_changes(integration, monkeypatch):
    queued: list[int] = []
    monkeypatch.setattr("crm_sync.tasks.queue_registration", queued.append)
    agent = make_agent(extension_code="100", retailcrm_user_id="7")
    assert queued == [integration.pk]  # a new registered agent
    agent.status = "busy"
    agent.save()
    assert queued == [integration.pk]  # a status is not part of the registration
    agent.extension_code = "200"
    agent.save()
    phone = ExternalPhone.objects.create(integration=integration, site_code="shop1", phone="+74999999999")
    phone.delete()
    assert queued == [integration.pk] * 4


# --- responsible manager routing -----------------------------------------------------------------


@pytest.fixture
def routing(integration, crm, monkeypatch):
    crm.add_user(7, firstName="Ann")
    crm.add_customer(42, phones=["+33612345678"], firstName="Jane", managerId=7)
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, enterprise="acme")
    switchboard = make_terminal(account, extension="200")
    manager = make_agent(extension_code="101", retailcrm_user_id="7")
    make_terminal(account, agent=manager, extension="101")
    integration.manager_routing = True
    integration.save()
    integration.shared_lines.set([switchboard])
    crm_domain.register_integration(integration)
    actions: list[tuple[str, dict]] = []

    def call_action(call, action, payload):
        actions.append((action, payload))
        return {}

    monkeypatch.setattr("telephony.control.call_action", call_action)
    monkeypatch.setattr("telephony.publish.publish_call", lambda call_id, wait=False: None)
    return SimpleNamespace(integration=integration, crm=crm, account=account, switchboard=switchboard,
                           manager=manager, actions=actions)


def ring_switchboard(world, number="+33612345678") -> Call:
    return apply_call_update(u.CallUpdate(
        account_id=world.account.pk, pbx_call_id="-77", state=u.RINGING, kind="ringing", payload={},
        occurred_at=timezone.now(), terminal_pbx_id=world.switchboard.pbx_id, direction=u.INBOUND,
        remote_number=number, allowed_actions=("answer", "hangup", "redirect"),
    )).call


def test_it_redirects_a_switchboard_call_to_the_free_manager_and_keeps_the_customer_for_the_card(routing):
    call = ring_switchboard(routing)
    assert crm_domain.route_call(routing.integration.pk, call.pk) == CrmCallSync.Routing.REDIRECTED
    assert routing.actions == [("redirect", {"destination": "101"})]
    crm = crm_domain.card_fields(call)["crm"]
    assert (crm["customer"]["firstName"], crm["links"]["customerLink"]) == ("Jane", f"{routing.crm.url}/customers/42")
    assert crm_domain.route_call(routing.integration.pk, call.pk) == "already routed"
    assert len(routing.actions) == 1


@pytest.mark.parametrize(("pstn_numbers", "destination"), [
    ([], "sip:ann@organization.org"), (["+33412345678"], "+33412345678")])
def test_it_redirects_a_telepo_call_to_the_managers_telepo_user_not_to_their_device(routing, pstn_numbers,
                                                                                    destination):
    # A Telepo terminal's extension is the deviceId calls are placed from: sent there, the redirect was refused
    # (no number) and the call rang as usual. The user is reached by their number, else their SIP-shaped userId.
    telepo = make_account(kind=PbxAccount.Kind.TELEPO, enterprise="organization.org")
    switchboard = make_terminal(telepo, pbx_id="switchboard@organization.org", extension="switchboard.soft")
    make_terminal(telepo, agent=routing.manager, pbx_id="ann@organization.org", extension="10.3rd_party_phone",
                  pstn_numbers=pstn_numbers)
    routing.integration.shared_lines.set([switchboard])
    call = apply_call_update(u.CallUpdate(
        account_id=telepo.pk, pbx_call_id="tp-1", state=u.RINGING, kind="webhook", payload={},
        occurred_at=timezone.now(), terminal_pbx_id=switchboard.pbx_id, direction=u.INBOUND,
        remote_number="+33612345678", allowed_actions=("answer", "hangup", "redirect"),
    )).call
    assert crm_domain.route_call(routing.integration.pk, call.pk) == CrmCallSync.Routing.REDIRECTED
    assert routing.actions == [("redirect", {"destination": destination})]


def test_it_names_the_shop_on_the_card_from_the_customers_site_else_the_dialled_shops_number(routing):
    routing.crm.add_site("shop-lyon", name="Lyon store")  # its name, read when the module is registered
    crm_domain.register_integration(routing.integration)
    assert routing.integration.site_names == {"shop-lyon": "Lyon store"}
    routing.crm.add_customer(43, phones=["+33611111111"], firstName="Paul", site="shop-lyon")
    call = ring_switchboard(routing, number="+33611111111")
    crm_domain.route_call(routing.integration.pk, call.pk)
    assert crm_domain.card_fields(call)["crm"]["shop"] == "Lyon store"
    # A caller retailCRM does not know, on a shop's number: that shop (its external phone, the PBX said).
    ExternalPhone.objects.create(integration=routing.integration, site_code="shop-paris", phone="+33412345600")
    Call.objects.filter(pk=call.pk).update(remote_number_e164="+33699999999", external_phone="+33412345600")
    CrmCallSync.objects.filter(call=call).update(routing=CrmCallSync.Routing.NONE)
    call.refresh_from_db()
    crm_domain.route_call(routing.integration.pk, call.pk)
    assert crm_domain.card_fields(call)["crm"]["shop"] == "shop-paris"  # no name known: its code


def test_it_keeps_the_shops_names_it_knew_when_retailcrm_does_not_give_them(routing, monkeypatch, caplog):
    from crm_sync.retailcrm.client import RetailCrmClient, RetailCrmError

    routing.crm.add_site("shop-lyon", name="Lyon store")
    crm_domain.register_integration(routing.integration)

    def refused(self):
        raise RetailCrmError("retailCRM refused GET /reference/sites (403): access denied", status=403)

    monkeypatch.setattr(RetailCrmClient, "sites", refused)
    crm_domain.register_integration(routing.integration)  # registered all the same
    routing.integration.refresh_from_db()
    assert routing.integration.site_names == {"shop-lyon": "Lyon store"} and routing.integration.registered_at
    assert f"integration {routing.integration.name}: the shops' names not read" in caplog.text


def test_it_lets_the_call_ring_as_usual_when_the_manager_is_busy_in_ctihub(routing):
    routing.manager.status = "dinner"
    routing.manager.save()
    call = ring_switchboard(routing)
    assert crm_domain.route_call(routing.integration.pk, call.pk) == CrmCallSync.Routing.RANG_AS_USUAL
    assert routing.actions == []


def test_it_lets_the_call_ring_as_usual_when_the_caller_has_no_manager(routing):
    call = ring_switchboard(routing, number="+33699999999")
    assert crm_domain.route_call(routing.integration.pk, call.pk) == CrmCallSync.Routing.RANG_AS_USUAL
    assert routing.actions == []
    assert "newCustomerLink" in crm_domain.card_fields(call)["crm"]["links"]


def test_it_lets_the_call_ring_as_usual_when_retailcrm_does_not_answer(routing):
    routing.crm.configure(down=True)
    call = ring_switchboard(routing)
    assert crm_domain.route_call(routing.integration.pk, call.pk) == CrmCallSync.Routing.RANG_AS_USUAL
    assert routing.actions == []
    assert "503" in CrmCallSync.objects.get(call=call).last_error


def test_it_asks_the_database_nothing_for_the_cards_of_an_account_no_routing_integration_serves(
        integration, django_assert_num_queries):
    """Every frame's card asked for retailCRM's fields in two queries, though only routing looks them up."""
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, enterprise="acme")
    call = apply_call_update(u.CallUpdate(
        account_id=account.pk, pbx_call_id="-78", state=u.RINGING, kind="ringing", payload={},
        occurred_at=timezone.now(), direction=u.INBOUND, remote_number="+33612345678",
    )).call
    assert crm_domain.serving_integrations(account.pk) == ((integration.pk,), ())  # served, not routed
    with django_assert_num_queries(0):
        assert crm_domain.card_fields_many([call]) == {call.pk: {"crm": None}}
