"""The admin's index: titled ctihub, the health of every PBX account, listener and retailCRM integration."""

import html
import re
from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from crm_sync.models import CrmCallSync, RetailCrmIntegration
from ctihub.templatetags.ctihub_health import ago
from telephony import health, plugins
from telephony.models import Listener, PbxAccount
from tests.factories import make_account, make_call, make_terminal

pytestmark = pytest.mark.django_db

INDEX = "/admin/"


def rows_of(page: str, section: str) -> list[str]:
    """The <tr> of each row of one section of the index, in order."""
    block = page.split(f'id="health-{section}"', 1)[1].split('class="module health-section"', 1)[0]
    return re.findall(r'<tr class="health-row.*?</tr>', block, re.S)


def status_of(row: str) -> str:
    return re.search(r'data-status="(\w+)"', row).group(1)


@pytest.fixture
def world():
    now = timezone.now()
    up = make_account(name="up-pbx", status=PbxAccount.Status.CONNECTED, last_event_at=now - timedelta(seconds=12))
    broken = make_account(name="broken-pbx", status=PbxAccount.Status.FAILED, password="pbx-password-xyz",
                          api_token="api-token-xyz", webhook_secret="hook-xyz",
                          last_error="login refused: 401 at /api/telepo/webhook/hook-xyz")
    live = Listener.objects.create(account=up, name="desk-1", terminal=make_terminal(up),
                                   state=Listener.State.CONNECTED, last_event_at=now - timedelta(minutes=3))
    dead = Listener.objects.create(account=up, name="desk-2", state=Listener.State.FAILED,
                                   last_error="socket refused: " + "x" * 200 + " END")
    failing = RetailCrmIntegration.objects.create(name="failing-crm", crm_url="https://a.retailcrm.ru",
                                                  api_key="crm-key-xyz", last_error="403 wrong apiKey")
    fine = RetailCrmIntegration.objects.create(name="fine-crm", crm_url="https://b.retailcrm.ru", api_key="k2",
                                               registered_at=now)
    CrmCallSync.objects.create(integration=fine, call=make_call(up), outbox_at=now, uploaded_at=now - timedelta(minutes=2))
    CrmCallSync.objects.create(integration=fine, call=make_call(up), outbox_at=now)  # waiting for its upload
    return {"up": up, "broken": broken, "live": live, "dead": dead, "failing": failing, "fine": fine}


def test_it_titles_the_admin_ctihub(admin_client, client, world):
    page = admin_client.get(INDEX).content.decode()
    assert "<title>ctihub at a glance | ctihub admin</title>" in page
    assert '<a href="/admin/">ctihub</a>' in page
    login = client.get(reverse("admin:login")).content.decode()
    assert "ctihub" in login and "Django administration" not in login


def test_it_shows_every_account_listener_and_integration_worst_first_with_a_word_for_its_status(admin_client, world):
    page = admin_client.get(INDEX).content.decode()

    accounts = rows_of(page, "pbx_accounts")
    assert [status_of(row) for row in accounts] == ["down", "ok"]
    assert "broken-pbx" in accounts[0] and "Failed (needs an admin)" in accounts[0]
    assert reverse("admin:telephony_pbxaccount_change", args=[world["broken"].pk]) in accounts[0]
    assert re.search(r'class="health-status health-down"[^>]*>down</span>', accounts[0])  # a word, not colour alone
    assert "12 s ago" in accounts[1] or "13 s ago" in accounts[1]

    listeners = rows_of(page, "listeners")
    assert [status_of(row) for row in listeners] == ["down", "ok"]
    assert "up-pbx/desk-2" in listeners[0] and "never" in listeners[0]
    assert reverse("admin:telephony_listener_change", args=[world["dead"].pk]) in listeners[0]
    assert "3 min ago" in listeners[1]

    integrations = rows_of(page, "retailcrm_integrations")
    assert [status_of(row) for row in integrations] == ["down", "ok"]
    assert "failing-crm" in integrations[0] and "403 wrong apiKey" in integrations[0]
    assert "Registration failed" in integrations[0]
    assert "2 min ago" in integrations[1] and "1 call waiting" in integrations[1]
    assert reverse("admin:crm_sync_retailcrmintegration_change", args=[world["fine"].pk]) in integrations[1]


def test_it_offers_the_action_that_fixes_each_failing_row_and_none_for_a_healthy_one(admin_client, world):
    page = admin_client.get(INDEX).content.decode()
    accounts, listeners = rows_of(page, "pbx_accounts"), rows_of(page, "listeners")
    integrations = rows_of(page, "retailcrm_integrations")

    def fix(row):
        found = re.search(r'<form method="post" action="([^"]+)">.*?name="action" value="(\w+)">'
                          r'.*?name="_selected_action" value="(\d+)">', row, re.S)
        return found and found.groups()

    assert fix(accounts[0]) == ("/admin/telephony/pbxaccount/", "test_connection", str(world["broken"].pk))
    assert fix(listeners[0]) == ("/admin/telephony/pbxaccount/", "restart_listeners", str(world["up"].pk))
    assert fix(integrations[0]) == ("/admin/crm_sync/retailcrmintegration/", "register_module",
                                    str(world["failing"].pk))
    assert fix(accounts[1]) is None and fix(listeners[1]) is None and fix(integrations[1]) is None


def test_it_re_registers_a_failing_integration_from_the_index(admin_client, world):
    page = admin_client.get(INDEX).content.decode()
    form = re.search(r'<form method="post" action="(/admin/crm_sync/[^"]+)">(.*?)</form>', page, re.S)
    data = dict(re.findall(r'name="(\w+)" value="([^"]*)"', form.group(2)))
    with mock.patch("crm_sync.domain.register_integration") as register:
        response = admin_client.post(form.group(1), data, follow=True)
    assert response.status_code == 200
    assert [call.args[0].pk for call in register.call_args_list] == [world["failing"].pk]
    assert "failing-crm: registered in retailCRM" in [str(m) for m in get_messages(response.wsgi_request)]


def test_it_truncates_a_long_error_and_keeps_the_full_text_in_its_title(admin_client, world):
    row = rows_of(admin_client.get(INDEX).content.decode(), "listeners")[0]
    shown = re.search(r'<span title="([^"]*)">([^<]*)</span>', row)
    assert html.unescape(shown.group(1)) == world["dead"].last_error
    assert len(html.unescape(shown.group(2))) <= 80 and "END" not in shown.group(2)


def test_it_never_shows_a_credential_on_the_index(admin_client, world):
    page = admin_client.get(INDEX).content.decode()
    for secret in ("pbx-password-xyz", "api-token-xyz", "hook-xyz", "crm-key-xyz", world["failing"].client_id):
        assert secret not in page, secret
    assert "/api/telepo/webhook/***" in page  # the account's error kept, its secret masked


def test_it_reads_as_many_queries_for_twenty_accounts_as_for_one(admin_client, django_assert_num_queries):
    now = timezone.now()

    def add_account(n):
        account = make_account(name=f"pbx-{n:02}", status=PbxAccount.Status.FAILED if n % 3 else
                               PbxAccount.Status.CONNECTED, last_error="boom")
        Listener.objects.create(account=account, name="desk", terminal=make_terminal(account),
                                state=Listener.State.BACKOFF, last_error="refused")
        integration = RetailCrmIntegration.objects.create(name=f"crm-{n:02}", crm_url=f"https://{n}.retailcrm.ru",
                                                          api_key="k", last_error="" if n % 2 else "403")
        CrmCallSync.objects.create(integration=integration, call=make_call(account), outbox_at=now, uploaded_at=now)

    add_account(0)
    admin_client.get(INDEX)  # the session and content types cached as they would be
    with CaptureQueriesContext(connection) as one:
        page = admin_client.get(INDEX).content.decode()
    assert len(rows_of(page, "pbx_accounts")) == 1
    for n in range(1, 20):
        add_account(n)
    with django_assert_num_queries(len(one)) as twenty:
        page = admin_client.get(INDEX).content.decode()
    sql = " ".join(query["sql"] for query in twenty.captured_queries)
    for secret_column in ('"password"', '"api_token"', '"webhook_secret"', '"api_key"', '"client_id"'):
        assert secret_column not in sql.replace('"auth_user"."password"', ""), secret_column  # never read, let alone shown
    assert len(rows_of(page, "pbx_accounts")) == 20 and len(rows_of(page, "listeners")) == 20
    assert len(rows_of(page, "retailcrm_integrations")) == 20


def test_it_shows_the_worst_rows_first_and_counts_every_one(admin_client, monkeypatch):
    monkeypatch.setattr(health, "ROW_LIMIT", 3)
    account = make_account(name="many", status=PbxAccount.Status.CONNECTED)
    states = [Listener.State.CONNECTED] * 5 + [Listener.State.BACKOFF, Listener.State.FAILED]
    for n, state in enumerate(states):
        Listener.objects.create(account=account, name=f"desk-{n}", state=state)
    page = admin_client.get(INDEX).content.decode()
    assert [status_of(row) for row in rows_of(page, "listeners")] == ["down", "degraded", "ok"]
    block = page.split('id="health-listeners"', 1)[1].split("</h2>", 1)[0]
    counts = dict((status, int(n)) for n, status in re.findall(r'health-count health-\w+">(\d+) (\w+)<', block))
    assert counts == {"down": 1, "degraded": 1, "ok": 5}
    assert "all 7" in page


def test_it_says_a_disabled_account_and_its_listeners_are_off_not_down(admin_client):
    account = make_account(name="old", enabled=False, status=PbxAccount.Status.FAILED)
    Listener.objects.create(account=account, name="desk", state=Listener.State.FAILED)
    page = admin_client.get(INDEX).content.decode()
    assert [status_of(row) for row in rows_of(page, "pbx_accounts")] == ["off"]
    listener = rows_of(page, "listeners")[0]
    assert status_of(listener) == "off" and "Account disabled" in listener


def test_it_marks_an_integration_whose_uploads_stalled_as_degraded(admin_client):
    now = timezone.now()
    account = make_account()
    integration = RetailCrmIntegration.objects.create(name="stuck", crm_url="https://c.retailcrm.ru", api_key="k",
                                                      registered_at=now - timedelta(days=1))
    CrmCallSync.objects.create(integration=integration, call=make_call(account), uploaded_at=now - timedelta(hours=1))
    CrmCallSync.objects.create(integration=integration, call=make_call(account), outbox_at=now - timedelta(hours=1))
    row = rows_of(admin_client.get(INDEX).content.decode(), "retailcrm_integrations")[0]
    assert status_of(row) == "degraded" and "uploads stalled" in row and "1 call waiting" in row


def test_it_shows_a_staff_user_only_what_they_may_view_and_no_fix_they_may_not_run(client, world):
    user = get_user_model().objects.create_user("viewer", password="pw-viewer-123", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_pbxaccount"))
    client.force_login(user)
    page = client.get(INDEX).content.decode()
    assert 'id="health-pbx_accounts"' in page
    assert 'id="health-listeners"' not in page and 'id="health-retailcrm_integrations"' not in page
    assert "broken-pbx" in page and 'name="action"' not in page


def test_it_keeps_the_index_up_when_a_plugged_in_section_fails(admin_client, world):
    def broken():
        raise RuntimeError("no")

    plugins.register_health_section("broken-plugin", broken)
    try:
        response = admin_client.get(INDEX)
    finally:
        plugins.unregister_health_section("broken-plugin")
    page = response.content.decode()
    assert response.status_code == 200
    assert "broken-plugin could not be read: RuntimeError" in page and "failing-crm" in page


def test_it_keeps_one_health_section_when_one_is_registered_twice():
    def section():
        return health.HealthSection("twice", "Twice", PbxAccount)

    plugins.register_health_section("twice", section)
    plugins.register_health_section("twice", lambda: health.HealthSection("other", "Other", PbxAccount))
    try:
        assert [s.key for s in health.sections()].count("twice") == 1
        assert "other" not in [s.key for s in health.sections()]
    finally:
        plugins.unregister_health_section("twice")
    assert "twice" not in [s.key for s in health.sections()]


@pytest.mark.parametrize(("seconds", "expected"), [
    (0, "just now"), (12, "12 s ago"), (59, "59 s ago"), (60, "1 min ago"), (3599, "59 min ago"),
    (3600, "1 h ago"), (86399, "23 h ago"), (86400 * 4, "4 d ago"), (-30, "just now"),
])
def test_it_says_how_long_ago_in_the_largest_whole_unit(seconds, expected):
    now = timezone.now()
    assert ago(now - timedelta(seconds=seconds), now) == expected
    assert ago(None, now) == "never"
