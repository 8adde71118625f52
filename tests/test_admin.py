import html
from datetime import timedelta

import pytest
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from crm_sync.models import ExternalPhone, RetailCrmIntegration
from telephony.models import CallEvent, Listener, PbxAccount
from tests.factories import make_account, make_agent, make_call, make_terminal

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    account = make_account(password="pbx-password-xyz", api_token="api-token-xyz", webhook_secret="hook-xyz")
    agent = make_agent()
    terminal = make_terminal(account, agent=agent)
    call = make_call(account, terminal=terminal, agent=agent)
    CallEvent.objects.create(call=call, kind="callRinging", payload={}, dedupe_key="k1")
    integration = RetailCrmIntegration.objects.create(name="crm", crm_url="https://x.retailcrm.ru", api_key="crm-key-xyz")
    ExternalPhone.objects.create(integration=integration, site_code="shop1", phone="+74999999999")
    return {"account": account, "integration": integration}


def test_it_renders_every_admin_page_for_a_superuser(admin_client, world):
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        assert admin_client.get(changelist).status_code == 200, changelist
        assert admin_client.get(changelist, {"q": "x"}).status_code == 200, changelist
        obj = model.objects.first()
        if obj is not None:
            change = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
            assert admin_client.get(change).status_code == 200, change
        add = reverse(f"admin:{meta.app_label}_{meta.model_name}_add")
        expected = 403 if model_admin.has_add_permission.__func__ is not admin.ModelAdmin.has_add_permission else 200
        assert admin_client.get(add).status_code == expected, add


def test_it_never_renders_credentials_in_the_admin(admin_client, world):
    pages = [
        reverse("admin:telephony_pbxaccount_change", args=[world["account"].pk]),
        reverse("admin:telephony_pbxaccount_changelist"),
        reverse("admin:crm_sync_retailcrmintegration_change", args=[world["integration"].pk]),
        reverse("admin:crm_sync_retailcrmintegration_changelist"),
    ]
    for url in pages:
        html = admin_client.get(url).content.decode()
        for secret in ("pbx-password-xyz", "api-token-xyz", "hook-xyz", "crm-key-xyz"):
            assert secret not in html, f"{secret} leaked on {url}"


def account_form_data(account: PbxAccount, **changes) -> dict:
    data = {
        "name": account.name, "kind": account.kind, "enabled": "on", "base_url": account.base_url,
        "ws_url": "", "enterprise": "", "login": account.login, "ca_bundle": "", "default_region": "",
        "password": "", "api_token": "", "webhook_secret": "",
        "terminals-TOTAL_FORMS": "0", "terminals-INITIAL_FORMS": "0",
        "listeners-TOTAL_FORMS": "0", "listeners-INITIAL_FORMS": "0",
    }
    data.update(changes)
    return data


def test_it_keeps_a_stored_password_when_the_field_is_left_blank(admin_client, world):
    account = world["account"]
    url = reverse("admin:telephony_pbxaccount_change", args=[account.pk])
    response = admin_client.post(url, account_form_data(account, login="renamed"))
    assert response.status_code == 302, response.content.decode()[:2000]
    account.refresh_from_db()
    assert account.login == "renamed"
    assert account.password == "pbx-password-xyz"
    assert account.api_token == "api-token-xyz"


def test_it_replaces_a_password_typed_in_the_admin(admin_client, world):
    account = world["account"]
    url = reverse("admin:telephony_pbxaccount_change", args=[account.pk])
    admin_client.post(url, account_form_data(account, password="new-password-1"))
    account.refresh_from_db()
    assert account.password == "new-password-1"


def test_it_shows_a_form_error_for_a_bad_websocket_url(admin_client, world):
    account = world["account"]
    url = reverse("admin:telephony_pbxaccount_change", args=[account.pk])
    response = admin_client.post(url, account_form_data(account, ws_url="http://not-a-websocket"))
    assert response.status_code == 200
    assert "Enter a valid URL" in response.content.decode()


REFUSAL = "Istra myCrm refused login as 'ENDUSER:user1' (ROUTER_ERR_401: authentication failed): check the login"


@pytest.fixture
def refused(world, settings):
    settings.ISTRA_LOGIN_COOLDOWN_SECONDS = 900
    at = timezone.now() - timedelta(minutes=5)
    PbxAccount.objects.filter(pk=world["account"].pk).update(
        login_refused_at=at, login_refused_reason=REFUSAL, login_refused_credentials="c" * 32)
    return at


def test_it_shows_why_logins_are_held_and_until_when_on_the_account_page_and_list(admin_client, world, refused):
    until = timezone.localtime(refused + timedelta(seconds=900))
    page = admin_client.get(reverse("admin:telephony_pbxaccount_change", args=[world["account"].pk])).content.decode()
    assert html.escape(REFUSAL) in page
    assert f"{until:%Y-%m-%d %H:%M:%S}" in page and "until you save this account" in page
    listing = admin_client.get(reverse("admin:telephony_pbxaccount_changelist")).content.decode()
    assert f"held until a save or {until:%H:%M}" in listing


def test_it_lets_logins_again_and_restarts_the_listeners_when_the_account_is_saved(admin_client, world, refused):
    account = world["account"]
    failed = Listener.objects.create(account=account, name="ctihub-1", state=Listener.State.FAILED,
                                     last_error=REFUSAL)
    response = admin_client.post(reverse("admin:telephony_pbxaccount_change", args=[account.pk]),
                                 account_form_data(account, password="the-right-one"), follow=True)
    assert "logins allowed again; 1 listeners restarting" in response.content.decode()
    account.refresh_from_db()
    assert (account.login_refused_at, account.login_refused_reason, account.login_refused_credentials) == \
        (None, "", "")
    failed.refresh_from_db()
    assert (failed.state, failed.last_error) == (Listener.State.IDLE, "")


def test_it_shows_a_remembered_redirect_and_forgets_it_on_request(admin_client, world):
    account = world["account"]
    PbxAccount.objects.filter(pk=account.pk).update(redirected_base_url="https://istra2/restletrouter",
                                                    redirected_at=timezone.now())
    change = reverse("admin:telephony_pbxaccount_change", args=[account.pk])
    assert "https://istra2/restletrouter" in admin_client.get(change).content.decode()
    admin_client.post(reverse("admin:telephony_pbxaccount_changelist"),
                      {"action": "forget_redirect", "_selected_action": [account.pk]})
    account.refresh_from_db()
    assert (account.redirected_base_url, account.redirected_at) == ("", None)


def test_it_keeps_a_remembered_redirect_unless_the_base_url_is_edited(admin_client, world):
    account = world["account"]
    PbxAccount.objects.filter(pk=account.pk).update(redirected_base_url="https://istra2/restletrouter")
    change = reverse("admin:telephony_pbxaccount_change", args=[account.pk])
    assert admin_client.post(change, account_form_data(account, login="renamed")).status_code == 302
    assert PbxAccount.objects.get(pk=account.pk).redirected_base_url == "https://istra2/restletrouter"
    saved = admin_client.post(change, account_form_data(account, base_url="https://istra3.example/restletrouter"))
    assert saved.status_code == 302, saved.context["adminform"].form.errors
    assert PbxAccount.objects.get(pk=account.pk).redirected_base_url == ""


def test_it_normalises_external_phones_to_e164_or_explains_why_not(admin_client, world):
    integration = world["integration"]
    url = reverse("admin:crm_sync_retailcrmintegration_change", args=[integration.pk])
    phone = integration.external_phones.get()
    base = {
        "name": "crm", "crm_url": "https://x.retailcrm.ru", "api_key": "", "module_code": "ctihub", "enabled": "on",
        "external_phones-TOTAL_FORMS": "2", "external_phones-INITIAL_FORMS": "1",
        "external_phones-0-id": str(phone.pk), "external_phones-0-integration": str(integration.pk),
        "external_phones-0-site_code": "shop1", "external_phones-0-phone": "+74999999999",
        "external_phones-1-integration": str(integration.pk), "external_phones-1-site_code": "shop2",
    }
    bad = admin_client.post(url, {**base, "external_phones-1-phone": "not a number"})
    assert bad.status_code == 200 and "is not a phone number" in bad.content.decode()
    good = admin_client.post(url, {**base, "external_phones-1-phone": "+7 (499) 888-88-88"})
    assert good.status_code == 302
    assert integration.external_phones.get(site_code="shop2").phone == "+74998888888"
    integration.refresh_from_db()
    assert integration.api_key == "crm-key-xyz"


def agent_form_data(agent, **changes) -> dict:
    data = {
        "user": str(agent.user_id), "extension_code": agent.extension_code, "retailcrm_user_id": "",
        "status": agent.status, "dialling_terminal": "",
    }
    data.update(changes)
    return data


def test_it_offers_only_the_agents_own_active_terminals_to_dial_from(admin_client):
    agent, other = make_agent(), make_agent()
    own = make_terminal(make_account(name="own-pbx"), agent=agent, extension="301")
    make_terminal(make_account(name="gone-pbx"), agent=agent, extension="302", active=False)
    make_terminal(make_account(name="their-pbx"), agent=other, extension="303")
    html = admin_client.get(reverse("admin:accounts_agent_change", args=[agent.pk])).content.decode()
    assert f'<option value="{own.pk}">301 (own-pbx)</option>' in html
    assert "gone-pbx" not in html and "their-pbx" not in html


def test_it_saves_the_agents_own_terminal_as_the_one_that_dials(admin_client):
    agent = make_agent()
    own = make_terminal(make_account(), agent=agent)
    url = reverse("admin:accounts_agent_change", args=[agent.pk])
    response = admin_client.post(url, agent_form_data(agent, dialling_terminal=str(own.pk)))
    assert response.status_code == 302, response.content.decode()[:2000]
    agent.refresh_from_db()
    assert agent.dialling_terminal == own


def test_it_refuses_another_agents_terminal_as_the_one_that_dials_with_a_clear_error(admin_client):
    agent, other = make_agent(), make_agent()
    theirs = make_terminal(make_account(), agent=other)
    url = reverse("admin:accounts_agent_change", args=[agent.pk])
    response = admin_client.post(url, agent_form_data(agent, dialling_terminal=str(theirs.pk)))
    assert response.status_code == 200
    assert "Choose one of this agent&#x27;s own active terminals" in response.content.decode()
    agent.refresh_from_db()
    assert agent.dialling_terminal is None
    agent.dialling_terminal = theirs
    with pytest.raises(ValidationError, match="own active terminals"):
        agent.full_clean()  # a form other than the admin's is refused too
