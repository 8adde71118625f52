"""The call history in a real browser, on real daphne and the simulator: filter, then call back from a row.

No worker: the history reads the database, and a call back is a REST request to the PBX (myRCC's makeCall)
made by the web process itself, as the console's dial is.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from telephony import history
from telephony.models import Call
from tests.factories import make_agent, make_call
from tests.support.istra_worlds import MYRCC_EXTENSION as EXTENSION
from tests.support.istra_worlds import myrcc_world
from tests.support.processes import ARTIFACTS, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_it_filters_the_history_calls_a_missed_caller_back_and_shows_a_supervisor_every_agents_pages(
        hub, browser):
    from tests.support.browser import csp_violations, log_in, wait_for_js

    hub.start(workers=0, web=True)
    sim, account, agent = myrcc_world(hub, listening=False)
    at = timezone.now() - timedelta(minutes=10)
    for number, answered in (("+33612345678", False), ("+33687654321", True)):
        make_call(account, agent=agent, state=Call.State.ENDED, remote_number_e164=number, created_at=at,
                  ended_at=at + timedelta(seconds=30), answered_at=at if answered else None,
                  talking_ms=30000 if answered else None, end_cause="hangup" if answered else "no_answer")

    page = browser.new_page(viewport={"width": 1100, "height": 700})
    log_in(page, hub.web_url, "jdoe", "agent-pass-123")
    # The console's recent calls: each with its time and a call-back button; one missed caller to call back.
    wait_for_js(page, "document.querySelectorAll('#recent li button.call-back').length === 2")
    assert page.get_attribute("#unreturned", "data-count") == "1"
    assert page.locator("#recent li time").count() == 2

    page.click("nav a[href='/history/']")
    page.wait_for_selector("#history-rows")
    assert page.locator("#history-rows tr").count() == 2
    page.select_option("#id_result", "missed")
    page.click(".history-filters button[type=submit]")
    page.wait_for_url(lambda url: "result=missed" in url)
    assert page.locator("#history-rows tr").count() == 1
    assert "+33 6 12 34 56 78" in page.inner_text("#history-rows")
    assert "result=missed" in page.get_attribute("#export", "href")
    # The export of the filtered calls, streamed by daphne chunk by chunk.
    export = page.request.get(hub.web_url + page.get_attribute("#export", "href"))
    assert export.ok and export.headers["content-type"].startswith("text/csv")
    lines = export.text().lstrip("\ufeff").splitlines()
    assert len(lines) == 2 and "'+33612345678" in lines[1] and "Missed" in lines[1]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "history-missed.png"), full_page=True)

    page.click("#history-rows button.call-back")
    wait_for(lambda: [c for c in sim.calls() if c["terminalId"] == EXTENSION], 10, what="the call back at the PBX")
    [line] = [c for c in sim.calls() if c["terminalId"] == EXTENSION]
    assert line["remote"]["number"].endswith("612345678"), line
    wait_for_js(page, "document.getElementById('history-notice').textContent.startsWith('Calling')")
    assert csp_violations(page) == []

    # A supervisor sees every agent's calls (jdoe's two, a colleague's page and more), a page at a time.
    make_agent("boss", is_supervisor=True)
    colleague = make_agent("asmith")
    earlier = at - timedelta(hours=1)
    Call.objects.bulk_create([
        Call(account=account, agent=colleague, pbx_call_id=f"old-{i}", direction=Call.Direction.INBOUND,
             state=Call.State.ENDED, remote_number_e164=f"+336100000{i:02d}", created_at=earlier - timedelta(minutes=i),
             ended_at=earlier - timedelta(minutes=i) + timedelta(seconds=5), end_cause="no_answer")
        for i in range(history.PAGE_SIZE)])
    total = history.PAGE_SIZE + 2
    boss = browser.new_context(viewport={"width": 1100, "height": 700}).new_page()
    log_in(boss, hub.web_url, "boss", "agent-pass-123")
    boss.goto(f"{hub.web_url}/history/")
    assert boss.inner_text("#history-count") == f"{total} calls"
    assert boss.locator("#history-rows tr").count() == history.PAGE_SIZE
    agents = boss.locator("#history-rows tr td:nth-child(2)").all_inner_texts()  # the Agent column
    assert agents[:2] == ["jdoe", "jdoe"] and set(agents[2:]) == {"asmith"}
    boss.click("nav.pages a[rel=next]")
    boss.wait_for_url(lambda url: "page=2" in url)
    assert boss.locator("#history-rows tr").count() == total - history.PAGE_SIZE
    assert "Page 2 of 2" in boss.inner_text("nav.pages")
    # Searched by number, as an agent types it (national, spaced): that one call, whichever page it was on.
    boss.fill("#id_number", "06 10 00 00 49")
    boss.click(".history-filters button[type=submit]")
    boss.wait_for_url(lambda url: "number=" in url and "page=" not in url)
    assert boss.locator("#history-rows tr").count() == 1
    row = boss.inner_text("#history-rows")
    assert "asmith" in row and "+33 6 10 00 00 49" in row
    assert boss.locator("nav.pages").count() == 0
    assert csp_violations(boss) == []
    boss.context.close()
