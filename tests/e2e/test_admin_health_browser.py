"""The admin's index in real chromium, served by daphne: an admin logs in, sees a down listener and a
failing retailCRM integration among healthy rows, follows the listener's link, and restarts it from the index."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from crm_sync.models import RetailCrmIntegration
from telephony.models import Listener, PbxAccount
from tests.factories import make_account
from tests.support.browser import csp_violations
from tests.support.processes import ARTIFACTS

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "admin-pw-9f2c1"


def test_it_shows_a_down_listener_and_a_failing_integration_and_leads_to_their_fix(hub, browser):
    hub.start(workers=0, web=True)
    get_user_model().objects.create_superuser("boss", "boss@example.com", PASSWORD)
    now = timezone.now()
    account = make_account(name="main-pbx", status=PbxAccount.Status.CONNECTED, last_event_at=now)
    Listener.objects.create(account=account, name="desk-ok", state=Listener.State.CONNECTED,
                            last_event_at=now - timedelta(minutes=40))
    down = Listener.objects.create(account=account, name="desk-down", state=Listener.State.FAILED,
                                   last_error="socket refused: 403 forbidden")
    broken = make_account(name="old-pbx", status=PbxAccount.Status.FAILED, last_error="login refused: 401")
    RetailCrmIntegration.objects.create(name="shop-crm", crm_url="https://shop.retailcrm.ru", api_key="crm-key-e2e",
                                        last_error="403 wrong apiKey")

    page = browser.new_page()
    try:
        page.on("console", lambda message: "Content Security Policy" in message.text
                and page.ctihub_csp_violations.append(message.text))
        page.ctihub_csp_violations = []
        page.goto(f"{hub.web_url}/admin/login/")
        page.fill("#id_username", "boss")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#health", timeout=15000)
        assert page.title() == "ctihub at a glance | ctihub admin"

        listener = page.locator("#health-listeners tr[data-status=down]")
        assert listener.count() == 1
        assert "main-pbx/desk-down" in listener.inner_text()
        status = listener.locator(".health-status")
        assert status.inner_text().strip().lower().endswith("down")  # the word, not the colour alone
        ok_status = page.locator("#health-listeners tr[data-status=ok] .health-status")
        colour = "el => getComputedStyle(el).backgroundColor"
        assert status.evaluate(colour) != ok_status.evaluate(colour)  # the stylesheet loaded, under the CSP
        assert "40 min ago" in page.locator("#health-listeners tr[data-status=ok]").inner_text()

        # Each PBX account's row: its status (word), last event, last error, and a link and a button to fix it.
        accounts = page.locator("#health-pbx_accounts")
        failed = accounts.locator("tr[data-status=down]")
        assert failed.count() == 1
        cells = failed.locator("th, td").all_inner_texts()
        assert cells[0] == "old-pbx" and " ".join(cells[1].lower().split()) == "down failed (needs an admin)"
        assert cells[2] == "never" and cells[3] == "login refused: 401"
        assert failed.locator("th a").get_attribute("href") == f"/admin/telephony/pbxaccount/{broken.pk}/change/"
        assert failed.locator("button", has_text="Test the connection").is_visible()
        healthy = accounts.locator("tr[data-status=ok]")
        assert "main-pbx" in healthy.inner_text() and healthy.locator("time").count() == 1
        assert healthy.locator("button").count() == 0  # nothing to fix

        integration = page.locator("#health-retailcrm_integrations tr[data-status=down]")
        assert "shop-crm" in integration.inner_text() and "403 wrong apiKey" in integration.inner_text()
        assert integration.locator("button", has_text="Re-register in retailCRM").is_visible()
        assert "crm-key-e2e" not in page.content()
        page.screenshot(path=str(ARTIFACTS / "admin-health.png"), full_page=True)

        listener.locator("th a").click()
        page.wait_for_url(f"**/admin/telephony/listener/{down.pk}/change/")
        assert "socket refused: 403 forbidden" in page.locator("#content").inner_text()

        page.go_back()
        page.locator("#health-listeners tr[data-status=down] button", has_text="Restart").click()
        page.wait_for_selector("ul.messagelist li.success")
        message = page.locator("ul.messagelist li.success").inner_text()
        assert "main-pbx: restart ok: 2 listeners restarting" in message.lower()  # the admin capitalises it
        down.refresh_from_db()
        assert (down.state, down.last_error) == (Listener.State.IDLE, "")
        assert csp_violations(page) == []
    finally:
        page.close()
