"""The PBX account admin actions an admin sets things up with, run through the admin against the simulator."""

import pytest
import redis
from django.conf import settings
from django.contrib.messages import get_messages

from simulator.harness import RunningSimulator
from telephony.models import Listener, PbxAccount, Terminal
from telephony.sockets.supervisor import restart_key
from tests.factories import make_account

TERMINAL = "5985841581756135023"  # a 64-bit id: must arrive digit for digit
CHANGELIST = "/admin/telephony/pbxaccount/"


@pytest.fixture(scope="module")
def running_simulator():
    with RunningSimulator() as sim:
        yield sim


@pytest.fixture
def istra(running_simulator):
    world = running_simulator.state.istra
    world.reset()
    world.add_user("chatfield", "0000", mycrm=True)
    world.add_extension(TERMINAL, "104", owner="chatfield", device_model="SIP generic device")
    world.add_extension("9007199254740993", "105", owner="chatfield", device_model="Polycom VVX 411")
    yield running_simulator
    world.reset()


def run_action(admin_client, action: str, account: PbxAccount) -> list[str]:
    response = admin_client.post(CHANGELIST, {"action": action, "_selected_action": [account.pk]}, follow=True)
    assert response.status_code == 200
    return [str(m) for m in get_messages(response.wsgi_request)]


def mycrm_account(sim, password="0000") -> PbxAccount:
    return make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url=sim.istra_base, login="chatfield", password=password)


@pytest.mark.django_db
def test_it_tests_an_accounts_connection_from_the_admin(admin_client, istra):
    account = mycrm_account(istra)
    assert run_action(admin_client, "test_connection", account) == [f"{account.name}: connection test OK: 2 terminals"]


@pytest.mark.django_db
def test_it_says_a_wrong_password_is_permanent_and_names_the_account(admin_client, istra):
    account = mycrm_account(istra, password="Not-The-Pa55word")
    [message] = run_action(admin_client, "test_connection", account)
    assert message.startswith(f"{account.name}: connection test failed (permanent: fix the account)")
    assert "Not-The-Pa55word" not in message


@pytest.mark.django_db
def test_it_syncs_terminals_from_the_admin_with_exact_ids_and_deactivates_vanished_ones(admin_client, istra):
    account = mycrm_account(istra)
    assert run_action(admin_client, "sync_terminals", account) == [
        f"{account.name}: terminal sync OK: 2 terminals listed by the PBX, 0 no longer listed (deactivated)"
    ]
    # myCrm's GetTerminals gives only terminalId and deviceModel (spec 000, "Get terminals").
    assert sorted(Terminal.objects.filter(account=account).values_list("pbx_id", "device_model")) == [
        (TERMINAL, "SIP generic device"), ("9007199254740993", "Polycom VVX 411"),
    ]
    istra.state.istra.reset()
    istra.state.istra.add_user("chatfield", "0000", mycrm=True)
    istra.state.istra.add_extension(TERMINAL, "104", owner="chatfield")
    [message] = run_action(admin_client, "sync_terminals", account)
    assert message.endswith("1 terminals listed by the PBX, 1 no longer listed (deactivated)")
    assert not Terminal.objects.get(account=account, pbx_id="9007199254740993").active


@pytest.mark.django_db
def test_it_restarts_an_accounts_listeners_and_gives_failed_ones_another_chance(admin_client, istra):
    account = mycrm_account(istra)
    failed = Listener.objects.create(account=account, name="l1", state=Listener.State.FAILED, last_error="boom")
    client = redis.Redis.from_url(settings.REDIS_URL)
    before = int(client.get(restart_key(account.pk)) or 0)
    assert run_action(admin_client, "restart_listeners", account) == [f"{account.name}: restart OK: 1 listeners restarting"]
    failed.refresh_from_db()
    assert (failed.state, failed.last_error) == (Listener.State.IDLE, "")
    assert int(client.get(restart_key(account.pk))) == before + 1  # what the holding worker watches
    client.close()


@pytest.fixture
def viewer_client(client, django_user_model):
    """A staff member who may look at PBX accounts and retailCRM integrations but not change them."""
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_pbxaccount", "view_retailcrmintegration"]))
    client.force_login(viewer)
    return client


@pytest.mark.django_db
def test_it_offers_the_actions_that_change_an_account_only_to_those_who_may_change_it(viewer_client, admin_client):
    # Each action changes the account or its PBX (a forgotten redirect, restarted sockets, a registration in
    # retailCRM): one who may only view it neither sees them nor runs them by posting the form.
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url="https://pbx.invalid",
                           redirected_base_url="https://elsewhere.invalid")
    assert 'name="action"' not in viewer_client.get(CHANGELIST).content.decode()
    assert 'value="forget_redirect"' in admin_client.get(CHANGELIST).content.decode()
    viewer_client.post(CHANGELIST, {"action": "forget_redirect", "_selected_action": [account.pk]}, follow=True)
    account.refresh_from_db()
    assert account.redirected_base_url == "https://elsewhere.invalid"
    run_action(admin_client, "forget_redirect", account)
    account.refresh_from_db()
    assert account.redirected_base_url == ""
    from crm_sync.models import RetailCrmIntegration

    RetailCrmIntegration.objects.create(name="shop", crm_url="https://shop.retailcrm.invalid", api_key="k")
    integrations = "/admin/crm_sync/retailcrmintegration/"
    assert 'value="register_module"' not in viewer_client.get(integrations).content.decode()
    assert 'value="register_module"' in admin_client.get(integrations).content.decode()
