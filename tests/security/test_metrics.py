"""/metrics: events applied, pop-up latency, sockets by state, outbox depth, CRM errors; bearer token."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import redis
from django.conf import settings as django_settings

from crm_sync.models import RetailCrmIntegration
from crm_sync.retailcrm.client import RetailCrmClient, RetailCrmError
from ctihub.lib import metrics
from telephony import updates as u
from telephony.domain import apply_call_update
from telephony.models import Listener
from tests.factories import make_account

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_metrics():
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    client.delete(metrics.EVENTS_KEY, metrics.CRM_ERRORS_KEY, metrics.POPUP_KEY,
                  *(metrics.TOKEN_WAIT_KEY.format(p) for p in metrics.TOKEN_WAIT_PRIORITIES))
    yield
    client.close()


def scrape(client, **headers) -> str:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in /metrics:\n{text}")


def test_it_counts_applied_events_and_times_the_popups(client, django_capture_on_commit_callbacks):
    account = make_account(kind="istra_myrcc")
    now = datetime.now(UTC)
    with django_capture_on_commit_callbacks(execute=True):
        for state in (u.RINGING, u.TALKING, u.ENDED):
            apply_call_update(u.CallUpdate(account_id=account.pk, pbx_call_id="-1", state=state, kind=state,
                                           payload={}, occurred_at=now, direction=u.INBOUND))
        # A replayed frame changes nothing and is not counted.
        apply_call_update(u.CallUpdate(account_id=account.pk, pbx_call_id="-1", state=u.ENDED, kind=u.ENDED,
                                       payload={}, occurred_at=now))
    deadline = time.monotonic() + 5
    text = scrape(client)
    while value(text, "ctihub_popup_latency_seconds_count") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        text = scrape(client)
    assert value(text, 'ctihub_call_events_applied_total{account_kind="istra_myrcc"}') == 3
    assert value(text, "ctihub_popup_latency_seconds_count") == 3
    assert value(text, 'ctihub_popup_latency_seconds_bucket{le="+Inf"}') == 3
    assert 0 < value(text, "ctihub_popup_latency_seconds_sum") < 15


def test_it_shows_sockets_by_state_and_the_outbox_depth(client):
    account = make_account()
    Listener.objects.create(account=account, name="a", state=Listener.State.CONNECTED)
    Listener.objects.create(account=account, name="b", state=Listener.State.BACKOFF)
    Listener.objects.create(account=account, name="c", state=Listener.State.CONNECTED)
    RetailCrmIntegration.objects.create(name="shop", crm_url="https://shop.retailcrm.ru", api_key="k")
    text = scrape(client)
    assert value(text, 'ctihub_listeners{state="connected"}') == 2
    assert value(text, 'ctihub_listeners{state="backoff"}') == 1
    assert value(text, 'ctihub_listeners{state="failed"}') == 0
    assert value(text, 'ctihub_crm_outbox_depth{integration="shop"}') == 0


class _Answer:
    def __init__(self, status):
        self.status_code, self.headers = status, {}

    def json(self):
        return {"success": False, "errorMsg": "Wrong apiKey value"}


class _Http:
    def __init__(self, status):
        self.status = status

    def request(self, *args, **kwargs):
        return _Answer(self.status)


class _NoLimit:
    def acquire(self, *args):
        return 0.0


def test_it_counts_crm_errors_by_kind(client):
    for status in (401, 401, 400):
        crm = RetailCrmClient("https://shop.retailcrm.ru", "key", http=_Http(status), limiter=_NoLimit())
        with pytest.raises(RetailCrmError):
            crm.get_module("ctihub")
    text = scrape(client)
    assert value(text, 'ctihub_crm_errors_total{kind="auth"}') == 2
    assert value(text, 'ctihub_crm_errors_total{kind="refused"}') == 1


def test_it_times_the_waits_for_retailcrms_rate_limit_by_priority(client):
    metrics.crm_token_wait("high", 0.0)
    metrics.crm_token_wait("high", 0.04)
    metrics.crm_token_wait("low", 2.0)
    text = scrape(client)
    assert value(text, 'ctihub_crm_token_wait_seconds_count{priority="high"}') == 2
    assert value(text, 'ctihub_crm_token_wait_seconds_bucket{le="0.001",priority="high"}') == 1
    assert value(text, 'ctihub_crm_token_wait_seconds_bucket{le="1.0",priority="low"}') == 0
    assert value(text, 'ctihub_crm_token_wait_seconds_sum{priority="low"}') == 2.0
    assert metrics.crm_token_waits("high") == {"count": 2, "waited": 1, "sum": 0.04, "max": 0.04}


def test_it_asks_for_the_bearer_token_when_one_is_set(client, settings):
    settings.METRICS_TOKEN = "scrape-token-123"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert "ctihub_listeners" in scrape(client, HTTP_AUTHORIZATION="Bearer scrape-token-123")


def test_it_sends_the_event_paths_observations_to_redis_together(monkeypatch):
    """One pipeline to Redis per frame was a tenth of the worker's CPU per live frame."""
    executed = []
    real_execute = redis.client.Pipeline.execute

    def counting_execute(pipe, *args, **kwargs):
        executed.append(len(pipe.command_stack))
        return real_execute(pipe, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counting_execute)
    for n in range(20):
        metrics.popup_latency_later(0.004 * n, 1, ["istra_mycrm"])
    deadline = time.monotonic() + 10
    while not executed and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(metrics.FLUSH_SECONDS * 2)
    assert len(executed) == 1
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    assert client.hget(metrics.EVENTS_KEY, "istra_mycrm") == b"20"
    assert client.hget(metrics.POPUP_KEY, "count") == b"20"
    assert client.hget(metrics.POPUP_KEY, "0.01") == b"3"  # 0, 4 and 8 ms
    assert abs(float(client.hget(metrics.POPUP_KEY, "sum")) - 0.004 * sum(range(20))) < 1e-6
    client.close()
