"""Istra calls reaching the simulated retailCRM through real Celery workers: events, uploads, routing."""

from datetime import timedelta

import pytest
from django.utils import timezone

from crm_sync.models import CrmCallSync, RetailCrmIntegration
from telephony import control
from telephony import updates as u
from telephony.domain import apply_call_update
from telephony.models import Call, Listener, PbxAccount, Terminal
from tests.factories import make_account, make_agent, make_terminal
from tests.support.processes import ARTIFACTS, wait_for
from tests.support.retailcrm_sim import API_KEY, RetailCrmControl
from tests.support.sim_control import IstraControl

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
AGENT_EXTENSION = "897778778"
SHARED_LINE = "897778000"


def crm_world(hub, *, routing=False):
    """A myRCC enterprise with one agent (code 101, retailCRM user 7) and a switchboard line."""
    istra, crm = IstraControl(hub.sim_url), RetailCrmControl(hub.sim_url)
    crm.reset()
    crm.add_api_key(API_KEY)
    crm.add_user(7, firstName="Ann", lastName="Manager")
    istra.add_user("rccadmin", "s3cret", enterprise="acme", myrcc=True)
    istra.add_extension(AGENT_EXTENSION, "101", enterprise="acme", label="Ann", myrcc=True)
    istra.add_extension(SHARED_LINE, "200", enterprise="acme", label="Switchboard", myrcc=True)
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=f"{hub.sim_url}/restletrouter",
                           login="rccadmin", password="s3cret", enterprise="acme")
    control.sync_terminals(account)
    agent = make_agent("ann", extension_code="101", retailcrm_user_id="7")
    Terminal.objects.filter(account=account, pbx_id=AGENT_EXTENSION).update(agent=agent)
    integration = RetailCrmIntegration.objects.create(
        name="shop", crm_url=hub.sim_url, api_key=API_KEY, module_code="ctihub", manager_routing=routing,
    )
    if routing:
        integration.shared_lines.set(Terminal.objects.filter(account=account, pbx_id=SHARED_LINE))
    from crm_sync import domain as crm_domain

    crm_domain.register_integration(integration)
    wait_for(lambda: Listener.objects.filter(account=account, state="connected").exists(), 30, what="the listener")
    return istra, crm, account, agent, integration


def test_it_lands_an_istra_call_in_retailcrm_as_one_in_event_one_hangup_and_one_upload(hub):
    hub.start(workers=1, web=False)
    istra, crm, account, agent, integration = crm_world(hub)

    line = istra.incoming(AGENT_EXTENSION, "0612345678", label="Smith")
    wait_for(lambda: [e["type"] for e in crm.events()] == ["in"], 15, what="the in event at retailCRM")
    istra.move(line["callId"], "answer")
    istra.move(line["callId"], "hangup", cause="disconnect")
    wait_for(lambda: len(crm.calls()) == 1, 20, what="the upload at retailCRM")

    call = Call.objects.get(account=account, pbx_call_id=line["callId"])
    events = crm.events()
    assert [e["type"] for e in events] == ["in", "hangup"]
    assert events[0] == {"type": "in", "phone": "+33612345678", "codes": ["101"], "userIds": [7],
                         "callExternalId": f"ctihub-{call.pk}"}
    assert events[1]["hangupStatus"] == "answered"
    [(external_id, record)] = crm.calls().items()
    assert external_id == f"ctihub-{call.pk}"
    assert (record["type"], record["phone"], record["code"], record["userId"], record["result"]) == (
        "in", "+33612345678", "101", 7, "answered")
    # The worker marks the call synced once retailCRM has answered the upload: a moment after it got it.
    wait_for(lambda: Call.objects.get(pk=call.pk).crm_sync_state == Call.CrmSync.SYNCED, 10,
             what="the call marked synced")
    assert sum(len(u["calls"]) for u in crm.uploads()) == 1  # exactly one upload, no retry


def test_it_routes_a_switchboard_call_to_the_free_responsible_manager_and_pops_only_their_card(hub, browser):
    from tests.support.browser import log_in

    hub.start(workers=1, web=True)
    istra, crm, account, agent, integration = crm_world(hub, routing=True)
    crm.add_customer(42, phones=["+33612345678"], firstName="Jane", lastName="Customer", managerId=7)
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    log_in(page, hub.web_url, "ann", "agent-pass-123")

    switchboard = istra.incoming(SHARED_LINE, "0612345678")
    card = page.wait_for_selector(".card[data-state=ringing] .customer", timeout=15000)
    assert card.inner_text() == "Jane Customer"
    link = page.get_attribute(".card a[data-link=customerLink]", "href")
    assert link == f"{hub.sim_url}/customers/42"
    assert istra.call(switchboard["callId"])["state"] == "dropped"  # redirected away from the switchboard
    ringing_for_ann = [c for c in istra.calls() if c["terminalId"] == AGENT_EXTENSION and c["state"] == "ringing"]
    assert len(ringing_for_ann) == 1
    row = CrmCallSync.objects.get(call__pbx_call_id=switchboard["callId"], integration=integration)
    assert (row.routing, row.routed_agent_id) == (CrmCallSync.Routing.REDIRECTED, agent.pk)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-routed-card.png"), full_page=True)


def test_it_sends_a_console_status_to_retailcrm_and_does_not_echo_retailcrms_own(hub, settings):
    from crm_sync import domain as crm_domain
    from tests.support.consoles import Console

    hub.start(workers=1, web=True)
    settings.PUBLIC_BASE_URL = hub.web_url  # the changeUserStatusUrl registered with retailCRM
    crm = RetailCrmControl(hub.sim_url)
    crm.reset()
    crm.add_api_key(API_KEY)
    crm.add_user(7, firstName="Ann")
    agent = make_agent("ann", extension_code="101", retailcrm_user_id="7")
    crm_domain.register_integration(RetailCrmIntegration.objects.create(name="shop", crm_url=hub.sim_url,
                                                                      api_key=API_KEY))
    console = Console(hub, agent)
    try:
        assert console.set_status("dinner")["ok"]
        wait_for(lambda: crm.status_changes() == [{"userId": 7, "status": "dinner"}], 15,
                 what="the console's status at retailCRM")

        answer = crm.user_status(userId=7, status="break")  # a manager's change in retailCRM
        assert answer["status"] == 200, answer
        console.wait(lambda m: m.get("type") == "agent_status" and m["status"] == "break", what="retailCRM's status")
        # The console's next change lands after anything the previous ones queued (one worker, in order).
        assert console.set_status("free")["ok"]
        wait_for(lambda: crm.status_changes()[-1:] == [{"userId": 7, "status": "free"}], 15,
                 what="the console's second status at retailCRM")
    finally:
        console.close()
    assert crm.status_changes() == [{"userId": 7, "status": "dinner"}, {"userId": 7, "status": "free"}]
    assert crm.users()["7"]["status"] == "free"


def test_it_sends_the_status_an_agent_picks_in_the_browser_to_retailcrm_and_shows_retailcrms(hub, browser, settings):
    # The same two ways as above, through the page: the console's status select (console.js) to retailCRM,
    # and retailCRM's change to the select, not sent back.
    from crm_sync import domain as crm_domain
    from tests.factories import AGENT_PASSWORD
    from tests.support.browser import csp_violations, log_in, wait_for_js

    hub.start(workers=1, web=True)
    settings.PUBLIC_BASE_URL = hub.web_url
    crm = RetailCrmControl(hub.sim_url)
    crm.reset()
    crm.add_api_key(API_KEY)
    crm.add_user(7, firstName="Ann")
    make_agent("ann", extension_code="101", retailcrm_user_id="7")
    crm_domain.register_integration(RetailCrmIntegration.objects.create(name="shop", crm_url=hub.sim_url,
                                                                      api_key=API_KEY))
    page = browser.new_page()
    log_in(page, hub.web_url, "ann", AGENT_PASSWORD)
    page.select_option("#status", "busy")
    wait_for(lambda: crm.status_changes() == [{"userId": 7, "status": "busy"}], 15,
             what="the status picked in the page at retailCRM")

    answer = crm.user_status(userId=7, status="dinner")  # a manager's change in retailCRM
    assert answer["status"] == 200, answer
    wait_for_js(page, "document.getElementById('status').value === 'dinner'", timeout=15000)
    page.wait_for_timeout(1500)  # room for an echo to arrive, if one were sent
    assert crm.status_changes() == [{"userId": 7, "status": "busy"}]
    assert csp_violations(page) == []
    page.close()


def test_it_keeps_everything_through_a_retailcrm_outage_and_two_workers_drain_it_within_the_limit(hub):
    hub.start(workers=2, web=False)
    crm = RetailCrmControl(hub.sim_url)
    crm.reset()
    crm.add_api_key(API_KEY)
    crm.add_user(7, firstName="Ann")
    account = make_account(kind=PbxAccount.Kind.TELEPO, enterprise="acme.example")  # no sockets to hold
    agent = make_agent("ann", extension_code="101", retailcrm_user_id="7")
    terminal = make_terminal(account, agent=agent, extension="101")
    integration = RetailCrmIntegration.objects.create(name="shop", crm_url=hub.sim_url, api_key=API_KEY)
    from crm_sync import domain as crm_domain

    crm_domain.register_integration(integration)
    crm.configure(down=True)
    calls = 90
    # Calls that ended moments ago: their pop-up events are still worth sending once retailCRM is back
    # (past a minute they are not, and only the upload goes: see crm_sync.domain.START_EVENT_STALE_AFTER).
    started = timezone.now() - timedelta(seconds=45)
    for n in range(calls):
        _whole_call(account, terminal, f"-{1000 + n}", started + timedelta(milliseconds=100 * n))
    wait_for(lambda: crm.stats()["statuses"].get("503", 0) >= 20, 30, what="the workers to meet the outage")
    assert crm.calls() == {} and crm.events() == []
    crm.configure(down=False)

    def landed():
        # The tasks' own retries come back within seconds; run the beat's sweep too, as beat would.
        from crm_sync.tasks import sweep_task

        sweep_task.delay()
        return len(crm.calls()) == calls and len(crm.events()) == 2 * calls

    # Seconds on a quiet machine; a busy one took 49 s once (the rate limit is asserted below, not the time).
    wait_for(landed, 150, interval=3, what="every event and upload after the outage")
    stats = crm.stats()
    assert stats["maxPerSecond"]["telephony"] <= stats["limits"]["telephony"], stats
    assert stats["rateLimited"] == 0, stats
    assert sorted(crm.calls()) == sorted(f"ctihub-{c.pk}" for c in Call.objects.filter(account=account))
    assert [u["duplicates"] for u in crm.uploads() if u["duplicates"]] == []
    types = [e["type"] for e in crm.events()]
    assert (types.count("in"), types.count("hangup")) == (calls, calls)


def _whole_call(account, terminal, pbx_call_id, at):
    """One finished incoming call, applied through the one domain path as a PBX frame would be."""
    common = dict(account_id=account.pk, pbx_call_id=pbx_call_id, payload={}, terminal_pbx_id=terminal.pbx_id,
                  direction=u.INBOUND, remote_number="+33612345678")
    apply_call_update(u.CallUpdate(state=u.RINGING, kind="CONFIRMED", occurred_at=at, seq=1, **common))
    apply_call_update(u.CallUpdate(state=u.TALKING, kind="CONFIRMED", occurred_at=at + timedelta(seconds=3),
                                   seq=2, **common))
    apply_call_update(u.CallUpdate(state=u.ENDED, kind="TERMINATED", occurred_at=at + timedelta(seconds=30),
                                   seq=3, end_cause=u.END_HANGUP, **common))



def test_it_sends_a_start_event_before_the_uploads_waiting_with_it_for_the_rate_limit(hub):
    # retailCRM's telephony budget is spent for the next few seconds and six outboxes (one API key, so one
    # budget) are already waiting for it, drained by six threads here, when two calls ring: their start
    # events, sent by the real call-events worker, must take the first two tokens. Without priorities
    # they are two of eight requests polling for those tokens at the same moments.
    import threading

    from django.db import connection

    from crm_sync import domain as crm_domain
    from crm_sync.retailcrm.ratelimit import TELEPHONY, RateLimiter, rate_and_capacity
    from ctihub.lib.shared_redis import shared_redis

    hub.start(workers=1, web=False)
    hub.start_events_worker()
    istra, crm, account, agent, integration = crm_world(hub)
    elsewhere = make_account(kind=PbxAccount.Kind.TELEPO, enterprise="other.example")  # no sockets to hold
    ended = timezone.now() - timedelta(minutes=5)
    outboxes = []
    for n in range(6):
        other = RetailCrmIntegration.objects.create(name=f"shop{n}", crm_url=hub.sim_url, api_key=API_KEY,
                                                    module_code=f"ctihub{n}")
        other.accounts.set([elsewhere])  # not the ringing call's: only its uploads share the budget
        call = Call.objects.create(
            account=elsewhere, pbx_call_id=f"old-{n}", direction=Call.Direction.INBOUND, state=Call.State.ENDED,
            remote_number_e164=f"+3361000000{n}", created_at=ended, answered_at=ended, ended_at=ended,
            end_cause="hangup",
        )
        CrmCallSync.objects.create(integration=other, call=call, outbox_at=ended, events_skipped="an old call")
        outboxes.append(other.pk)
    before = max([r["seq"] for r in crm.requests()], default=0)

    rate, _ = rate_and_capacity(TELEPHONY)
    deficit_seconds = 8.0  # generous: the ringing frames must reach the bucket while the uploads wait
    redis = shared_redis()
    seconds, micros = redis.time()
    key = RateLimiter().key(API_KEY, TELEPHONY)
    redis.hset(key, mapping={"tokens": str(-rate * deficit_seconds), "ts": str(seconds * 1_000_000 + micros)})
    redis.pexpire(key, 60_000)

    def drain(integration_id):
        try:
            crm_domain.upload_outbox(integration_id)
        finally:
            connection.close()

    drains = [threading.Thread(target=drain, args=(pk,)) for pk in outboxes]
    for thread in drains:
        thread.start()
    istra.incoming(AGENT_EXTENSION, "0612345678", label="Smith")
    istra.incoming(AGENT_EXTENSION, "0698765432", label="Jones")
    for thread in drains:
        thread.join(60)
    wait_for(lambda: len(crm.calls()) == 6 and [e["type"] for e in crm.events()] == ["in", "in"], 30,
             interval=0.5, what="the two start events and the six uploads at retailCRM")
    sent = [r["path"].rsplit("/", 2)[-2:] for r in crm.requests(before) if "/telephony/" in r["path"]]
    assert sent[:2] == [["call", "event"]] * 2, sent  # the start events first, though the uploads asked before
    assert sent.count(["calls", "upload"]) == 6, sent
