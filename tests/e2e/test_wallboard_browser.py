"""The wallboard in a real browser, on real daphne and Redis: the agent grid, the floor's figures and the chart, live.

The calls are committed by this process (``apply_call_update``), which publishes their cards as a worker would.
"""

from __future__ import annotations

import re
import time

import psutil
import pytest
from django.utils import timezone

from telephony import plugins
from telephony import updates as u
from telephony.domain import apply_call_update
from telephony.models import Call
from tests.factories import make_account, make_agent, make_call, make_terminal
from tests.support.processes import ARTIFACTS

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROW = "document.querySelector('#agents tr[data-agent=\"{id}\"]')"
HOURS_SUM = "[...document.querySelectorAll('#hours tr')].reduce((s, r) => s + Number(r.children[{n}].textContent), 0)"
DURATION = "{row}.children[4].textContent"  # how long the agent's call has rung, or been talked on
BARS_UP = ("[...document.querySelectorAll('#chart rect.bar-{kind}')]"
           ".filter(r => Number(r.getAttribute('height')) > 0).length")

# A card as console.js passes it on (its "ctihub:message" event), for a call that came in `ago` seconds ago and
# has ended since: what wallboard.js counts, without a call at the PBX.
SEND_CARD = """(c) => {
  const at = (s) => new Date(Date.now() - s * 1000).toISOString();
  const card = {id: c.id, version: c.version, agent: c.agent, direction: "in", internal: false, state: "ended",
    created_at: at(c.ago), answered_at: c.answered ? at(c.ago - 1) : null, ended_at: at(c.ago - 2)};
  document.dispatchEvent(new CustomEvent("ctihub:message", {detail: {type: "card", card}}));
}"""


def text(page, element_id: str) -> str:
    return page.inner_text(f"#{element_id}")


def test_it_follows_an_agent_from_ringing_to_talking_with_the_figures_and_the_chart(hub, browser, monkeypatch):
    from tests.support.browser import csp_violations, log_in, wait_for_js

    hub.start(workers=0, web=True)
    account = make_account()
    agent = make_agent("jdoe")
    make_terminal(account, pbx_id="t-1", agent=agent)
    make_agent("boss", is_supervisor=True)
    make_call(account, agent=agent, state=Call.State.ENDED)  # missed earlier today
    monkeypatch.setattr(plugins, "_card_enrichers", [lambda calls: {
        c.pk: {"crm": {"customer": {"id": 7, "firstName": "Marie", "lastName": "Curie"}}} for c in calls}])

    def call(state, **fields):
        return apply_call_update(u.CallUpdate(
            account_id=account.pk, pbx_call_id="c-1", state=state, kind=state, payload={},
            occurred_at=timezone.now(), terminal_pbx_id="t-1", direction=u.INBOUND, remote_number="+33612345678",
            **fields,
        )).call

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    log_in(page, hub.web_url, "boss", "agent-pass-123")
    page.goto(f"{hub.web_url}/wallboard/")
    page.wait_for_selector("#connection[data-state=live]", timeout=10000)
    row = ROW.format(id=agent.pk)
    wait_for_js(page, f"{row} !== null && {row}.dataset.status === 'free'")
    assert (text(page, "fig-answered"), text(page, "fig-missed"), text(page, "fig-rate")) == ("0", "1", "0 %")
    assert page.evaluate(f"{row}.querySelector('td.missed').textContent") == "1"

    # It rings: the agent's row says with whom, the floor counts it and the longest ring ticks.
    call(u.RINGING)
    wait_for_js(page, f"{row}.dataset.call === 'ringing'")
    assert "Marie Curie (+33 6 12 34 56 78)" in page.evaluate(f"{row}.textContent")
    assert re.fullmatch(r"\d+:\d\d", page.evaluate(DURATION.format(row=row)))
    assert text(page, "fig-ringing") == "1"
    first = text(page, "fig-longest")
    wait_for_js(page, f"!['—', {first!r}].includes(document.getElementById('fig-longest').textContent)", timeout=5000)

    # Answered: the figures, the agent's count and the chart follow.
    call(u.TALKING)
    wait_for_js(page, "document.getElementById('fig-answered').textContent === '1'")
    wait_for_js(page, f"{row}.dataset.call === 'talking'")
    assert (text(page, "fig-ringing"), text(page, "fig-longest"), text(page, "fig-talking")) == ("0", "—", "1")
    assert text(page, "fig-rate") == "50 %" and re.fullmatch(r"0:\d\d", text(page, "fig-wait"))
    assert page.evaluate(f"{row}.querySelector('td.answered').textContent") == "1"
    # For how long: counted from the answer, and ticking (the grid renders every second).
    talked = page.evaluate(DURATION.format(row=row))
    assert re.fullmatch(r"0:\d\d", talked) and "Talking: Marie Curie" in page.evaluate(f"{row}.textContent")
    wait_for_js(page, f"![{talked!r}, ''].includes({DURATION.format(row=row)})", timeout=5000)
    assert page.evaluate(HOURS_SUM.format(n=1)) == 1 and page.evaluate(HOURS_SUM.format(n=2)) == 1
    assert page.evaluate(BARS_UP.format(kind="answered")) == 1 and page.evaluate(BARS_UP.format(kind="missed")) == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "wallboard-figures.png"), full_page=True)

    # The server's count again (as every quarter of an hour and at midnight): the same, nothing counted twice.
    page.evaluate("window.__snapshots = 0; document.addEventListener('ctihub:message', "
                  "e => { if (e.detail.type === 'snapshot') window.__snapshots += 1; })")
    page.evaluate("document.dispatchEvent(new CustomEvent('ctihub:refresh'))")
    wait_for_js(page, "window.__snapshots === 1")
    assert (text(page, "fig-answered"), text(page, "fig-missed"), text(page, "fig-rate")) == ("1", "1", "50 %")
    assert page.evaluate(f"{row}.querySelector('td.answered').textContent") == "1"

    # Hung up: the agent is free of it, and the answered call stays counted.
    call(u.ENDED, end_cause=u.END_HANGUP)
    wait_for_js(page, f"{row}.dataset.call === ''")
    assert page.evaluate(DURATION.format(row=row)) == ""
    assert (text(page, "fig-answered"), text(page, "fig-talking")) == ("1", "0")

    # Cards as the resync may bring them: a call seen first ended (answered) counts once, however often its
    # card comes; a call that ended before the snapshot was counted by the server, so not again here.
    page.evaluate(SEND_CARD, {"id": 10**9, "version": 3, "agent": agent.pk, "ago": 2, "answered": True})
    wait_for_js(page, "document.getElementById('fig-answered').textContent === '2'")
    for version in (3, 4):
        page.evaluate(SEND_CARD, {"id": 10**9, "version": version, "agent": agent.pk, "ago": 2, "answered": True})
    page.evaluate(SEND_CARD, {"id": 10**9 + 1, "version": 9, "agent": agent.pk, "ago": 60, "answered": False})
    page.wait_for_timeout(1200)  # a second's render at least
    assert (text(page, "fig-answered"), text(page, "fig-missed"), text(page, "fig-rate")) == ("2", "1", "67 %")
    assert page.evaluate(f"{row}.querySelector('td.answered').textContent") == "2"
    assert csp_violations(page) == []


COUNT_SOCKETS = """(() => {
  const Native = window.WebSocket;
  window.__opened = 0;
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.__opened += 1; }
  };
})();"""


def live_wallboard(hub, browser, keep_alive: str | None = None):
    """A supervisor's wallboard, live, on the hub's one daphne; ``keep_alive``: console.js's override."""
    from tests.support.browser import log_in

    hub.start(workers=0, web=True)
    account = make_account()
    agent = make_agent("jdoe")
    make_terminal(account, pbx_id="t-1", agent=agent)
    make_agent("boss", is_supervisor=True)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.add_init_script(COUNT_SOCKETS)
    if keep_alive:
        page.add_init_script(f"window.ctihubKeepAlive = {keep_alive};")
    log_in(page, hub.web_url, "boss", "agent-pass-123")
    page.goto(f"{hub.web_url}/wallboard/")
    page.wait_for_selector("#connection[data-state=live]", timeout=10000)
    return page, account, agent


def test_it_gives_up_the_socket_of_a_hung_web_process_and_comes_back_live(hub, browser):
    # The wallboard lives on console.js's socket, so it has the console's keep-alive: a daphne that hangs
    # (SIGSTOP: its sockets stay open, no close reaches the page) is noticed by the missing pong. With one
    # daphne there is nowhere else to go: the page shows it is offline and is live again once daphne runs.
    from tests.support.browser import wait_for_js

    page, account, agent = live_wallboard(hub, browser)
    daphne = psutil.Process(hub.web.process.pid)
    stopped_at = time.monotonic()
    daphne.suspend()
    try:
        # A ping every 3 s, given up after 4 s without its pong: within 7 s; bounded generously.
        wait_for_js(page, "document.getElementById('connection').dataset.state !== 'live'", timeout=15000)
        noticed_s = time.monotonic() - stopped_at
    finally:
        daphne.resume()
    page.wait_for_selector("#connection[data-state=live]", timeout=30000)
    assert page.evaluate("window.__opened") >= 2  # live on a new socket, not the old one come back
    apply_call_update(u.CallUpdate(
        account_id=account.pk, pbx_call_id="c-1", state=u.RINGING, kind="callAlerting", payload={},
        occurred_at=timezone.now(), terminal_pbx_id="t-1", direction=u.INBOUND, remote_number="+33612345678"))
    wait_for_js(page, f"{ROW.format(id=agent.pk)}.dataset.call === 'ringing'")
    print(f"the wallboard noticed the hung daphne after {noticed_s:.1f} s")


def test_it_checks_its_socket_at_once_when_its_tab_shows_again(hub, browser):
    # A hidden tab's timers are slowed by the browser (as rarely as once a minute): shown again, the page pings
    # at once. Here the regular ping is a minute away, so only that ping can notice the hung daphne in time.
    from tests.support.browser import wait_for_js

    page, _account, _agent = live_wallboard(hub, browser, keep_alive="{ pingEveryMs: 60000, pongWithinMs: 4000 }")
    daphne = psutil.Process(hub.web.process.pid)
    daphne.suspend()
    try:
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # the page is visible
        wait_for_js(page, "document.getElementById('connection').dataset.state !== 'live'", timeout=15000)
    finally:
        daphne.resume()
    page.wait_for_selector("#connection[data-state=live]", timeout=30000)
