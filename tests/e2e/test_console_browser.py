"""The agent console in a real browser, on real daphne, a real worker and the simulator."""

import pytest

from telephony import control
from telephony.models import Listener, PbxAccount
from tests.factories import make_account, make_agent
from tests.support.processes import ARTIFACTS, wait_for
from tests.support.sim_control import IstraControl

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
EXTENSION = "897778778"


def myrcc_world(hub):
    sim = IstraControl(hub.sim_url)
    sim.add_user("rccadmin", "s3cret", enterprise="acme", myrcc=True)
    sim.add_extension(EXTENSION, "101", enterprise="acme", label="John Doe", myrcc=True)
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=f"{hub.sim_url}/restletrouter",
                           login="rccadmin", password="s3cret", enterprise="acme")
    control.sync_terminals(account)
    agent = make_agent("jdoe")
    account.terminals.filter(pbx_id=EXTENSION).update(agent=agent)
    wait_for(lambda: Listener.objects.filter(account=account, state="connected").exists(), 30, what="the listener")
    return sim, account


def test_it_pops_a_card_holds_from_it_survives_a_reload_and_closes_on_hangup(hub, browser):
    from tests.support.browser import log_in

    hub.start(workers=1, web=True)
    sim, _ = myrcc_world(hub)
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    log_in(page, hub.web_url, "jdoe", "agent-pass-123")

    line = sim.incoming(EXTENSION, "0612345678", label="Smith")
    card = page.wait_for_selector(".card[data-state=ringing]", timeout=10000)
    assert "+33 6 12 34 56 78" in card.inner_text() and "Smith" in card.inner_text()

    sim.move(line["callId"], "answer")
    page.wait_for_selector(".card[data-state=talking] button[data-action=hold]", timeout=10000)
    page.click(".card button[data-action=hold]")
    wait_for(lambda: sim.call(line["callId"])["state"] == "held", 10, what="the call held at the simulator")
    page.wait_for_selector(".card[data-state=held] button[data-action=resume]", timeout=10000)

    page.reload()
    page.wait_for_selector("#connection[data-state=live]", timeout=10000)
    page.wait_for_selector(".card[data-state=held]", timeout=10000)
    assert page.locator(".card").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-card-held.png"), full_page=True)

    sim.move(line["callId"], "hangup", cause="disconnect")
    page.wait_for_selector("#recent li.answered", timeout=10000)
    assert page.locator(".card").count() == 0
    assert "answered" in page.inner_text("#recent")
