"""The language chooser in a real browser, on real daphne and Redis: the page, the console's own strings
(built by console.js from Django's JavaScript catalog) and the refusals the console's socket sends, in French.

The call is committed by this process (``apply_call_update``), which publishes its card as a worker would.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from telephony import updates as u
from telephony.domain import apply_call_update
from tests.factories import make_account, make_agent, make_terminal
from tests.support.processes import ARTIFACTS
from tests.test_i18n import compiled  # noqa: F401  (a fixture: the catalogs are compiled)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.usefixtures("compiled")
def test_it_switches_the_console_to_french_with_the_chooser(hub, browser):
    from tests.support.browser import csp_violations, log_in

    hub.start(workers=0, web=True)
    account = make_account()
    agent = make_agent("jdoe")
    make_terminal(account, pbx_id="t-1", agent=agent)
    page = browser.new_page(viewport={"width": 1000, "height": 700}, locale="en-US")
    log_in(page, hub.web_url, "jdoe", "agent-pass-123")
    assert page.inner_text("#live-heading") == "Live calls"

    page.select_option("#language-select", "fr")
    page.click("form.language button")
    page.wait_for_selector("html[lang=fr]", timeout=10000)
    page.wait_for_selector("#connection[data-state=live]", timeout=10000)
    assert page.inner_text("#live-heading") == "Appels en cours"
    assert page.inner_text("#connection") == "En direct"  # set by console.js

    # A card console.js builds: its state, direction and buttons in French.
    call = apply_call_update(u.CallUpdate(
        account_id=account.pk, pbx_call_id="fr-1", state=u.RINGING, kind=u.RINGING, payload={},
        occurred_at=timezone.now(), terminal_pbx_id="t-1", direction=u.INBOUND, remote_number="+33612345678",
    )).call
    card = page.wait_for_selector(f'.card[data-call="{call.pk}"][data-state=ringing]', timeout=10000)
    assert card.query_selector(".state").inner_text() == "Sonne"
    assert card.query_selector(".direction").inner_text() == "Entrant"

    # A refusal from the console's socket, in the page's language.
    page.fill("#dial-number", "abc")
    page.click("#dial button[type=submit]")
    page.wait_for_selector("#notice:has-text('saisissez un numéro de téléphone ou un poste')", timeout=10000)

    # Remembered: the next visit is still in French.
    page.goto(f"{hub.web_url}/")
    page.wait_for_selector("#connection[data-state=live]", timeout=10000)
    assert page.inner_text("#recent-heading") == "Appels récents"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-french.png"))
    assert csp_violations(page) == []
