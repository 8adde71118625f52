"""The agent console in a real browser, on real daphne, a real worker and the simulator."""

import json

import pytest

from accounts.models import Agent
from telephony.models import Call
from tests.factories import make_agent
from tests.support.istra_worlds import MYRCC_EXTENSION as EXTENSION
from tests.support.istra_worlds import myrcc_world
from tests.support.processes import ARTIFACTS, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_it_pops_a_card_holds_from_it_survives_a_reload_and_closes_on_hangup(hub, browser):
    from tests.support.browser import log_in

    hub.start(workers=1, web=True)
    sim, _, _ = myrcc_world(hub)
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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-card-held.png"), full_page=True)

    sim.move(line["callId"], "hangup", cause="disconnect")
    page.wait_for_selector("#recent li.answered", timeout=10000)
    assert page.locator(".card").count() == 0
    assert "answered" in page.inner_text("#recent")


def test_it_dials_shows_a_refusal_on_the_card_keeps_the_wallboard_live_and_survives_a_daphne_restart(hub, browser):
    from tests.support.browser import csp_violations, log_in, wait_for_js

    hub.start(workers=1, web=True)
    sim, account, _ = myrcc_world(hub)
    agent_id = account.terminals.get(pbx_id=EXTENSION).agent_id
    make_agent("boss", is_supervisor=True)
    console = browser.new_page(viewport={"width": 380, "height": 800})  # a narrow, phone-sized screen
    log_in(console, hub.web_url, "jdoe", "agent-pass-123")
    wallboard = browser.new_page(viewport={"width": 1200, "height": 700})
    log_in(wallboard, hub.web_url, "boss", "agent-pass-123")
    wallboard.goto(f"{hub.web_url}/wallboard/")
    wallboard.wait_for_selector("#connection[data-state=live]", timeout=10000)

    # Click-to-call from the console dials from the agent's own extension.
    console.fill("#dial-number", "04 12 34 56 70")
    console.click("#dial button[type=submit]")
    wait_for(lambda: [c for c in sim.calls() if c["terminalId"] == EXTENSION], 10, what="the call at the PBX")
    [line] = [c for c in sim.calls() if c["terminalId"] == EXTENSION]
    console.wait_for_selector(".card[data-state=dialing], .card[data-state=ringing]", timeout=10000)
    wait_for_js(wallboard, "document.querySelector('#calls tr') !== null", timeout=10000)

    # The PBX answers and the agent's status changes: the wallboard follows both live.
    sim.move(line["callId"], "answer")  # the agent's phone goes off-hook: the far end rings
    sim.move(line["callId"], "answer")  # the far end answers
    console.wait_for_selector(".card[data-state=talking] button[data-action=hold]", timeout=10000)
    wait_for_js(wallboard, "document.getElementById('fig-talking').textContent === '1'", timeout=10000)
    console.select_option("#status", "busy")
    wait_for_js(
        wallboard,
        "[...document.querySelectorAll('#agents tr')].some(r => r.textContent.includes('jdoe') && r.dataset.status === 'busy')",
        timeout=10000,
    )
    assert Agent.objects.get(pk=agent_id).status == "busy"

    # The PBX refuses the next hold: the card says why, and the call stays as it was.
    sim.fail_next(1, 503, app="myRCC", path="/hold")
    console.click(".card button[data-action=hold]")
    wait_for_js(console, "document.querySelector('.card .card-error').textContent.length > 0", timeout=10000)
    assert "IPTC not started" in console.inner_text(".card .card-error")
    assert sim.call(line["callId"])["state"] == "talking"

    # A deploy restarts daphne mid-call: both pages reconnect by themselves and show the call once.
    hub.restart_web()
    for page in (console, wallboard):
        page.wait_for_selector("#connection[data-state=live]", timeout=20000)
    console.wait_for_selector(".card[data-state=talking]", timeout=10000)
    assert console.locator(".card").count() == 1
    assert wallboard.locator("#calls tr").count() == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    console.screenshot(path=str(ARTIFACTS / "console-narrow-talking.png"), full_page=True)
    wallboard.screenshot(path=str(ARTIFACTS / "wallboard-live.png"), full_page=True)

    sim.move(line["callId"], "hangup", cause="disconnect")
    console.wait_for_selector("#recent li.answered", timeout=10000)
    wait_for_js(wallboard, "document.querySelectorAll('#calls tr').length === 0", timeout=10000)
    assert csp_violations(console) == [] and csp_violations(wallboard) == []  # the pages need no exception



def test_it_lets_the_agent_choose_the_other_call_remove_a_conference_party_and_transfer_blind(hub, browser):
    """Telepo (issue 18, point 6): with three calls the card asks which to conference with; the conference's
    card removes a party; a transfer to a number says its type and whether it is blind."""
    from telephony.providers.telepo.tasks import reconcile_telepo_accounts_task
    from tests.e2e.test_telepo_webhook import ALICE, telepo_hub
    from tests.support.browser import csp_violations, log_in, wait_for_js

    telepo, account, _alice, _bob = telepo_hub(hub)
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    log_in(page, hub.web_url, "alice", "agent-pass-123")
    page.wait_for_selector("#connection[data-state=live]", timeout=10000)
    ids = []
    for n in (1, 2, 3):
        call = telepo.incoming(ALICE, f"+3361234560{n}", displayName=f"Caller {n}")
        telepo.answer(call["callId"])
        ids.append(call["callId"])
        if n == 1:
            # The first call's snapshot while it is alone (no conference yet), as a busy machine had it: the
            # later ones bring conference under the same stateToken, and must not read as its replay.
            wait_for(lambda: Call.objects.filter(pbx_call_id=ids[0], state="talking").exclude(state_token="")
                     .exists(), 20, what="the first call's snapshot")
    # The snapshot each webhook asks for brings Telepo's own actions (a second call makes conference possible);
    # one more, as the periodic reconcile does, once the three are up: the test waits on no debounce timing.
    wait_for_js(page, "document.querySelectorAll('.card[data-state=talking], .card[data-state=held]').length === 3",
                timeout=20000)
    reconcile_telepo_accounts_task.delay()
    try:
        wait_for_js(page, "document.querySelectorAll('.card button[data-action=conference_add]').length === 3",
                    timeout=30000)
    except TimeoutError:
        # Seen in 2 of 16 runs under load before snapshots stopped being named by their stateToken alone: a
        # snapshot taken while the first call was alone was stored under its token, and every later one (the
        # same token, more actions) dropped as its replay. Say what the page, the database and Telepo hold.
        from django.utils import timezone

        from telephony.providers import provider_for
        from telephony.providers.telepo.frames import parse_snapshot

        shown = page.evaluate("[...document.querySelectorAll('.card .actions')].map(a => a.dataset.actions)")
        stored = list(Call.objects.filter(account=account).values_list("state", "state_token", "allowed_actions"))
        skipped = parse_snapshot(provider_for(account).snapshot(ALICE), account.pk, ALICE, timezone.now()).skipped
        raise AssertionError(f"cards' actions {shown}; stored {stored}; the snapshot skips {skipped}") from None
    first, second, third = (page.locator(".card", has_text=f"56 0{n}") for n in (1, 2, 3))

    # Two other calls qualify: the card asks which one, listing each by number, name and state.
    first.locator("button[data-action=conference_add]").click()
    page.wait_for_selector("#call-dialog[open] li", timeout=5000)
    assert page.locator("#call-dialog li").count() == 2
    assert "56 02" in page.inner_text("#call-dialog") and "56 03" in page.inner_text("#call-dialog")
    page.locator("#call-dialog li", has_text="56 03").locator("button").click()
    wait_for(lambda: telepo.call(ids[0])["conference"], 10, what="the conference at the PBX")
    (conference,) = [r for r in telepo.requests() if "/conferenceadd/" in r["path"]]
    assert json.loads(conference["body"])["targetCallId"] == ids[2]

    # The conference's card lists its other party (the third call, not the second) and removes it.
    first.locator("button[data-action=conference_remove]").wait_for(timeout=10000)
    wait_for_js(page, "[...document.querySelectorAll('.card')].filter(c => c.textContent.includes('56 03'))"
                      ".some(c => c.querySelector('button[data-action=conference_remove]'))", timeout=15000)
    first.locator("button[data-action=conference_remove]").click()
    page.wait_for_selector("#call-dialog[open] li", timeout=5000)
    assert page.locator("#call-dialog li").count() == 1 and "56 03" in page.inner_text("#call-dialog li")
    page.click("#call-dialog li button")
    wait_for(lambda: telepo.call(ids[2])["status"] == "TERMINATED", 10, what="the party removed at the PBX")
    third.wait_for(state="detached", timeout=10000)
    assert first.locator(".card-error").inner_text() == ""

    # A blind transfer of the second call to a number, of the type the agent picked.
    second.locator("button[data-action=redirect]").click()
    page.fill("#call-dialog input[name=destination]", "+15555")
    page.select_option("#call-dialog select[name=type]", "CAMP_ON")
    page.check("#call-dialog input[name=blind]")
    page.click("#call-dialog button[type=submit]")
    wait_for(lambda: telepo.call(ids[1])["status"] == "TERMINATED", 10, what="the blind transfer at the PBX")
    assert telepo.call(ids[1])["transfers"] == [{"destination": "tel:+15555", "type": "CAMP_ON", "blind": True}]
    second.wait_for(state="detached", timeout=10000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-call-control.png"), full_page=True)
    assert csp_violations(page) == []
