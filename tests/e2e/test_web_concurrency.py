"""A real daphne under concurrent requests: makeCallUrl clicks wait on the PBX side by side, and
requests share the web pool's database connections instead of opening one each."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from django.conf import settings

from crm_sync.models import RetailCrmIntegration
from telephony import control
from telephony.models import PbxAccount, Terminal
from tests.factories import make_account, make_agent
from tests.faults.harness import FaultIstraControl

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

POOL_THREADS = 4
EXTENSIONS = {"897778771": "101", "897778772": "102"}
PBX_ANSWER_SECONDS = 1.5


@pytest.fixture
def hub_settings():
    # Connections kept between requests as in production (scripts/test sets 0 for the test process).
    return {"WEB_POOL_THREADS": str(POOL_THREADS), "DATABASE_CONN_MAX_AGE": "60"}


@pytest.fixture
def clicks(hub):
    """Two agents of one myRCC account, and the makeCallUrl each one's click sends."""
    hub.start(workers=0, web=True)
    istra = FaultIstraControl(hub.sim_url)
    istra.add_user("rccadmin", "s3cret", enterprise="acme", myrcc=True)
    for extension, number in EXTENSIONS.items():
        istra.add_extension(extension, number, enterprise="acme", myrcc=True)
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=f"{hub.sim_url}/restletrouter",
                           login="rccadmin", password="s3cret", enterprise="acme")
    control.sync_terminals(account)
    for extension, number in EXTENSIONS.items():
        agent = make_agent(extension_code=number, retailcrm_user_id=number)
        Terminal.objects.filter(account=account, pbx_id=extension).update(agent=agent)
    integration = RetailCrmIntegration.objects.create(name="shop", crm_url=hub.sim_url, api_key="k" * 32)
    urls = [f"{hub.web_url}/api/retailcrm/make-call?clientId={integration.client_id}&code={number}"
            f"&userId={number}&phone=%2B33612345678" for number in EXTENSIONS.values()]
    return istra, urls


def test_it_places_two_concurrent_calls_of_one_account_in_one_pbx_answer_time_not_two(hub, clicks):
    istra, urls = clicks
    assert requests.get(urls[0], timeout=20).status_code == 200  # logged in: only placeCall is left to wait for
    istra.configure(answerDelay=PBX_ANSWER_SECONDS)
    seen_before = max([entry["seq"] for entry in istra.requests()], default=0)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda url: requests.get(url, timeout=20), urls))
    elapsed = time.monotonic() - started

    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert all(a.json() == {"success": True, "callerIdPresented": False} for a in answers)
    assert elapsed >= PBX_ANSWER_SECONDS
    # Side by side, not one after the other: the PBX got the second placeCall before it answered the first
    # (it answers each one PBX_ANSWER_SECONDS after it came). Asserted on the PBX's own arrival times, not on
    # the clicks' total time (a slow, busy machine adds to that): one after the other never passes.
    arrivals = sorted(entry["time"] for entry in istra.requests(since=seen_before)
                      if entry["method"] == "POST" and entry["path"].endswith("/placeCall"))
    assert len(arrivals) == 2, arrivals
    assert arrivals[1] - arrivals[0] < PBX_ANSWER_SECONDS, f"the second came {arrivals[1] - arrivals[0]:.2f} s later"


def test_it_answers_a_burst_of_requests_on_no_more_database_connections_than_its_pool_threads(hub):
    hub.start(workers=0, web=True)
    daphne = psutil.Process(hub.web.process.pid)
    database_port = int(settings.DATABASES["default"].get("PORT") or 5432)
    seen: set[int] = set()

    def note_database_connections():
        for connection in daphne.net_connections(kind="tcp"):
            if connection.raddr and connection.raddr.port == database_port:
                seen.add(connection.laddr.port)

    with ThreadPoolExecutor(max_workers=8) as pool:  # /healthz asks the database every time
        answers = [pool.submit(requests.get, f"{hub.web_url}/healthz", timeout=20) for _ in range(48)]
        while not all(a.done() for a in answers):
            note_database_connections()
            time.sleep(0.005)
    note_database_connections()

    assert [a.result().status_code for a in answers] == [200] * 48
    # Each pool thread keeps its connection between requests: not one connection per request.
    assert 1 <= len(seen) <= POOL_THREADS, sorted(seen)
