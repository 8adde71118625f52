"""The console's call alerts in a real browser, on real daphne and Redis: desktop notifications, the ring, the title.

Headless chromium shows no notification, so ``window.Notification`` is a recording stand-in (its permission
kept in sessionStorage, as a browser keeps it across reloads), and the tab's visibility is the test's to set.
The calls are committed by this process (``apply_call_update``), which publishes their cards as a worker would.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from accounts.models import Agent
from telephony import plugins
from telephony import updates as u
from telephony.domain import apply_call_update
from tests.factories import make_account, make_agent, make_terminal
from tests.support.processes import ARTIFACTS, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

STAND_INS = """
(() => {
  const log = { requested: 0, made: [], focused: 0 };
  window.__alerts = log;
  class RecordedNotification extends EventTarget {
    constructor(title, options) {
      super();
      Object.assign(this, { title, closed: false, onclick: null, onclose: null }, options);
      // As a real one: its on<event> properties are called for the events it fires.
      for (const type of ["click", "close"]) this.addEventListener(type, (e) => this[`on${type}`] && this[`on${type}`](e));
      log.made.push(this);
    }
    close() { if (!this.closed) { this.closed = true; this.dispatchEvent(new Event("close")); } }
    static get permission() { return sessionStorage.getItem("permission") || "default"; }
    static requestPermission() {
      log.requested += 1;
      sessionStorage.setItem("permission", "granted");
      return Promise.resolve("granted");
    }
  }
  window.Notification = RecordedNotification;
  window.focus = () => { log.focused += 1; };
  let hidden = false;
  Object.defineProperty(document, "hidden", { get: () => hidden, configurable: true });
  Object.defineProperty(document, "visibilityState", { get: () => (hidden ? "hidden" : "visible"), configurable: true });
  window.__setHidden = (value) => { hidden = value; document.dispatchEvent(new Event("visibilitychange")); };
})();
"""
NOTES = "window.__alerts.made.map(n => ({title: n.title, body: n.body, tag: n.tag, closed: n.closed}))"


def test_it_notifies_a_hidden_tab_of_a_ringing_call_once_rings_counts_and_keeps_the_switches(
        hub, browser, monkeypatch):
    from tests.support.browser import csp_violations, log_in, wait_for_js

    hub.start(workers=0, web=True)
    account = make_account()
    agent = make_agent("jdoe")
    make_terminal(account, pbx_id="t-1", agent=agent)
    # retailCRM's lookup, as crm_sync's card enricher puts it on the card.
    # Its shop: the customer's site, by the name retailCRM gives it (crm_sync.domain.cards).
    customers = {"+33612345678": {"id": 7, "firstName": "Marie", "lastName": "Curie", "site": "shop-paris"}}
    shops = {"shop-paris": "Paris store"}
    monkeypatch.setattr(plugins, "_card_enrichers", [lambda calls: {
        c.pk: {"crm": {"customer": customers[c.remote_number_e164],
                       "shop": shops.get(customers[c.remote_number_e164].get("site"))}
               if c.remote_number_e164 in customers else None}
        for c in calls}])

    def call(pbx_call_id, state, number="+33612345678", **fields):
        return apply_call_update(u.CallUpdate(
            account_id=account.pk, pbx_call_id=pbx_call_id, state=state, kind=state, payload={},
            occurred_at=timezone.now(), terminal_pbx_id="t-1", direction=u.INBOUND, remote_number=number, **fields,
        )).call

    context = browser.new_context(viewport={"width": 1000, "height": 700})
    context.add_init_script(STAND_INS)
    page = context.new_page()
    log_in(page, hub.web_url, "jdoe", "agent-pass-123")
    base_title = page.title()

    # Nothing asked on load: only the button asks.
    assert page.evaluate("window.__alerts.requested") == 0
    assert page.get_attribute("#alerts", "data-permission") == "default"
    page.click("#alerts-enable")
    wait_for_js(page, "document.getElementById('alerts').dataset.permission === 'granted'")
    assert page.evaluate("window.__alerts.requested") == 1
    assert page.is_hidden("#alerts-enable") and page.is_visible(".alerts-hint[data-when=granted]")
    page.click("#alerts-sound")  # a click: the page may start its audio from now on
    wait_for(lambda: Agent.objects.get(pk=agent.pk).ring_sound, 10, what="the ring switch saved")

    # A call rings while the tab is hidden: one notification, named after the customer, with the shop and number.
    page.evaluate("window.__setHidden(true)")
    first = call("-1", u.RINGING, remote_label="SMITH J", external_phone="+33412345600")
    wait_for_js(page, "window.__alerts.made.length === 1")
    [note] = page.evaluate(NOTES)
    assert note["title"] == "Marie Curie" and note["tag"] == f"call-{first.pk}"
    assert note["body"].splitlines() == ["Incoming call, shop Paris store", "+33 6 12 34 56 78"]
    assert page.inner_text(f'.card[data-call="{first.pk}"] .shop') == "Shop Paris store"
    assert page.title() == f"(1) Ringing — {base_title}"
    assert page.get_attribute("#alerts", "data-sound") == "ringing"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-alerts-ringing.png"))

    # Answered: the notification closes, the ring stops and the title is the page's again.
    call("-1", u.TALKING)
    wait_for_js(page, "window.__alerts.made[0].closed")
    wait_for_js(page, f"document.title === {base_title!r}")
    assert page.get_attribute("#alerts", "data-sound") == "idle"

    # A call that rings while the tab is shown notifies no one, not even once the tab is hidden after.
    page.evaluate("window.__setHidden(false)")
    second = call("-2", u.RINGING, number="+33687654321")
    page.wait_for_selector(f'.card[data-call="{second.pk}"][data-state=ringing]', timeout=10000)
    page.evaluate("window.__setHidden(true)")
    # Two ringing, hidden: the title counts both; only the new one notifies, by its number (no customer known).
    third = call("-3", u.RINGING, number="+33611111111")
    wait_for_js(page, "window.__alerts.made.length === 2")
    assert page.evaluate(NOTES)[1]["title"] == "+33 6 11 11 11 11"
    assert page.title() == f"(2) Ringing — {base_title}"
    # retailCRM finds the customer while it rings: the notification is replaced (same tag), not added to.
    customers["+33611111111"] = {"id": 8, "firstName": "Jean", "lastName": "Dupont"}
    call("-3", u.RINGING, number="+33611111111", remote_label="DUPONT")
    wait_for_js(page, "window.__alerts.made.length === 3")
    replaced = page.evaluate(NOTES)[2]
    assert replaced["title"] == "Jean Dupont" and replaced["tag"] == f"call-{third.pk}"
    assert "+33 6 11 11 11 11" in replaced["body"]
    # A click on it brings the tab forward and closes it.
    page.evaluate("window.__alerts.made[2].dispatchEvent(new Event('click'))")
    assert page.evaluate("window.__alerts.focused") == 1 and page.evaluate("window.__alerts.made[2].closed")
    fourth = call("-4", u.RINGING, number="+33622222222")
    wait_for_js(page, "window.__alerts.made.length === 4")
    page.evaluate("window.__setHidden(false)")  # the agent looks: no notification left up
    assert page.evaluate("window.__alerts.made[3].closed")
    for c in (second, third, fourth):
        call(c.pbx_call_id, u.ENDED, end_cause=u.END_HANGUP, number=c.remote_number_e164)
    wait_for_js(page, f"document.title === {base_title!r}")
    assert page.evaluate("window.__alerts.made.length") == 4

    # Notifications off; a reload shows both switches as saved, asks nothing, and plays nothing before a click.
    page.click("#alerts-desktop")
    wait_for(lambda: not Agent.objects.get(pk=agent.pk).desktop_notifications, 10, what="the switch saved")
    page.reload()
    page.wait_for_selector("#connection[data-state=live]", timeout=10000)
    assert not page.is_checked("#alerts-desktop") and page.is_checked("#alerts-sound")
    assert page.evaluate("window.__alerts.requested") == 0 and page.is_hidden("#alerts-enable")
    page.evaluate("window.__setHidden(true)")
    fifth = call("-5", u.RINGING, number="+33633333333")
    page.wait_for_selector(f'.card[data-call="{fifth.pk}"][data-state=ringing]', timeout=10000)
    assert page.get_attribute("#alerts", "data-sound") == "blocked"
    assert page.is_visible(".alerts-hint[data-when=sound-blocked]")
    assert page.evaluate("window.__alerts.made.length") == 0
    assert csp_violations(page) == []
    context.close()
