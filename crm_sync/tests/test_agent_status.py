"""Two-way status: a status set in ctihub reaches retailCRM (``POST /api/v5/users/{id}/status``), the latest
only, within the rate limit; a status retailCRM sent is not sent back. On the real simulator."""

from __future__ import annotations

import logging

import pytest

from accounts.domain import set_agent_status
from crm_sync import domain as crm_domain
from crm_sync import tasks
from crm_sync.domain import agent_status
from crm_sync.models import RetailCrmIntegration
from crm_sync.retailcrm.client import RetailCrmClient, RetailCrmError, RetailCrmNotFound
from crm_sync.retailcrm.ratelimit import GENERAL, HIGH, LOW, RateLimiter
from tests.support.retailcrm_sim import API_KEY

pytestmark = pytest.mark.django_db


@pytest.fixture
def status_world(world):
    """``world`` (agent on retailCRM user 7, free there), with the agent's status keys clean in Redis."""
    r = agent_status._redis()
    keys = [k.format(world.agent.pk) for k in (agent_status.PENDING_KEY, agent_status.SENDING_KEY,
                                                agent_status.FROM_CRM_KEY)]
    r.delete(*keys)
    yield world
    r.delete(*keys)


def change(agent, status, source="console", *, capture):
    with capture(execute=True):
        set_agent_status(agent, status, source=source)


def status_requests(crm):
    return [r for r in crm.requests() if r["path"].startswith("/api/v5/users/")]


def test_it_queues_a_console_status_and_sends_it_as_retailcrm_wants_it(
        status_world, queued, crm, django_capture_on_commit_callbacks):
    agent = status_world.agent
    change(agent, "dinner", capture=django_capture_on_commit_callbacks)
    assert queued == [("push_agent_status_task", (agent.pk,))]

    report = agent_status.push_agent_status(agent.pk)

    assert report.sent == [status_world.integration.pk]
    assert crm.status_changes() == [{"userId": 7, "status": "dinner"}]
    assert crm.users()["7"]["status"] == "dinner"
    [request] = status_requests(crm)
    assert (request["method"], request["path"], request["form"], request["apiKey"], request["status"]) == (
        "POST", "/api/v5/users/7/status", {"status": "dinner"}, API_KEY, 200)


def test_it_queues_one_task_for_many_changes_and_sends_only_the_latest(
        status_world, queued, crm, django_capture_on_commit_callbacks):
    agent = status_world.agent
    for status in ("busy", "dinner", "break"):
        change(agent, status, capture=django_capture_on_commit_callbacks)
    assert queued == [("push_agent_status_task", (agent.pk,))]

    agent_status.push_agent_status(agent.pk)
    assert crm.status_changes() == [{"userId": 7, "status": "break"}]

    change(agent, "free", capture=django_capture_on_commit_callbacks)  # after the task ran: a new one
    assert len(queued) == 2


def test_it_does_not_send_back_a_status_retailcrm_sent(
        status_world, queued, client, crm, django_capture_on_commit_callbacks):
    agent = status_world.agent
    with django_capture_on_commit_callbacks(execute=True):  # retailCRM calls changeUserStatusUrl
        response = client.get("/api/retailcrm/user-status", {
            "clientId": status_world.integration.client_id, "code": "100", "userId": "7", "status": "dinner"})
    assert response.status_code == 200, response.content
    agent.refresh_from_db()
    assert agent.status == "dinner"
    assert queued == []
    assert agent_status.push_agent_status(agent.pk).skipped == "retailCRM set this status"
    assert status_requests(crm) == []


def test_it_does_not_echo_a_retailcrm_status_that_came_after_a_queued_console_one(
        status_world, queued, crm, django_capture_on_commit_callbacks):
    agent = status_world.agent
    change(agent, "busy", capture=django_capture_on_commit_callbacks)
    change(agent, "dinner", source="retailcrm", capture=django_capture_on_commit_callbacks)  # before the task

    report = agent_status.push_agent_status(agent.pk)

    assert report.skipped == "retailCRM set this status"
    assert status_requests(crm) == []
    change(agent, "free", capture=django_capture_on_commit_callbacks)  # the console's again: it goes
    agent_status.push_agent_status(agent.pk)
    assert crm.status_changes() == [{"userId": 7, "status": "free"}]


def test_it_sends_nothing_for_an_agent_without_a_retailcrm_user_id(
        status_world, queued, crm, django_capture_on_commit_callbacks):
    from tests.factories import make_agent

    agent = make_agent()
    change(agent, "busy", capture=django_capture_on_commit_callbacks)
    assert queued == []
    assert agent_status.push_agent_status(agent.pk).skipped == "no retailCRM user id"
    assert status_requests(crm) == []


def test_it_takes_a_high_token_from_the_general_bucket_not_the_call_events(status_world, monkeypatch):
    taken = []
    real = RateLimiter.acquire

    def acquire(self, api_key, kind, max_wait, priority=HIGH):
        taken.append((kind, priority))
        return real(self, api_key, kind, max_wait, priority)

    monkeypatch.setattr(RateLimiter, "acquire", acquire)
    set_agent_status(status_world.agent, "busy")
    agent_status.push_agent_status(status_world.agent.pk)
    assert taken == [(GENERAL, HIGH)]


def test_it_could_never_serve_a_low_request_from_the_general_bucket():
    # Why the status goes HIGH (see RetailCrmClient.user_status): a full general bucket holds one token,
    # and a low request leaves one behind.
    limiter = RateLimiter(prefix="ctihub:test:status-bucket")
    limiter.client.delete(limiter.key("k", GENERAL))
    assert limiter.try_acquire("k", GENERAL, LOW) > 0
    assert limiter.try_acquire("k", GENERAL, HIGH) == 0


def test_it_logs_a_refusal_naming_the_integration_and_agent_but_not_the_key(status_world, crm, caplog):
    agent = status_world.agent
    agent.retailcrm_user_id = "99"  # retailCRM has no user 99: 404
    agent.save(update_fields=["retailcrm_user_id"])
    set_agent_status(agent, "busy")
    with caplog.at_level(logging.WARNING, logger="crm_sync.domain.agent_status"):
        report = agent_status.push_agent_status(agent.pk)
    assert report.failed == [status_world.integration.pk] and report.retry == []
    # Its own logger's lines only: the simulator's thread may log its access line after the block above ended.
    [line] = [r.getMessage() for r in caplog.records if r.name == "crm_sync.domain.agent_status"]
    assert "'shop'" in line and f"agent {agent.pk}" in line and "404" in line
    assert API_KEY not in line


def test_it_retries_with_backoff_only_the_integrations_that_were_unavailable(status_world, monkeypatch):
    agent = status_world.agent
    down = RetailCrmIntegration.objects.create(name="down", crm_url="http://127.0.0.1:9", api_key="other-key",
                                               client_id="client-id-down-0123456789")
    set_agent_status(agent, "break")
    retried = []

    class Retry(Exception):
        pass

    def retry(**kwargs):
        retried.append(kwargs)
        return Retry()

    monkeypatch.setattr(tasks.push_agent_status_task, "retry", retry)
    with pytest.raises(Retry):
        tasks.push_agent_status_task.run(agent.pk)
    assert status_world.crm.status_changes() == [{"userId": 7, "status": "break"}]
    assert retried == [{"args": (agent.pk, [down.pk]), "countdown": crm_domain.backoff(1),
                        "max_retries": tasks.SELF_RETRIES}]


def test_it_retries_the_task_shortly_while_another_sends_or_redis_is_away(status_world, monkeypatch):
    import redis

    retried = []

    class Retry(Exception):
        pass

    def retry(**kwargs):
        retried.append(kwargs)
        return Retry()

    monkeypatch.setattr(tasks.push_agent_status_task, "retry", retry)
    agent_status._redis().set(agent_status.SENDING_KEY.format(status_world.agent.pk), "someone")
    with pytest.raises(Retry):
        tasks.push_agent_status_task.run(status_world.agent.pk)

    class Away:
        def __getattr__(self, name):
            raise redis.ConnectionError("Redis is restarting")

    monkeypatch.setattr(agent_status, "_redis", Away)
    with pytest.raises(Retry):
        tasks.push_agent_status_task.run(status_world.agent.pk)
    assert retried == [{"countdown": tasks.BUSY_COUNTDOWN, "max_retries": tasks.BUSY_RETRIES},
                       {"countdown": crm_domain.backoff(1), "max_retries": tasks.SELF_RETRIES}]
    assert status_world.crm.status_changes() == []


def test_it_lets_one_task_at_a_time_send_an_agents_status(status_world):
    agent_status._redis().set(agent_status.SENDING_KEY.format(status_world.agent.pk), "someone")
    with pytest.raises(agent_status.StatusBusy):
        agent_status.push_agent_status(status_world.agent.pk)
    assert status_world.crm.status_changes() == []


def test_it_skips_an_integration_that_said_it_has_no_such_user(status_world):
    RetailCrmIntegration.objects.filter(pk=status_world.integration.pk).update(not_exist_user_ids=["7"])
    report = agent_status.push_agent_status(status_world.agent.pk)
    assert report.sent == report.failed == report.retry == []
    assert status_world.crm.status_changes() == []


@pytest.mark.parametrize("user_id, status, error, said", [
    ("7", "lunch", RetailCrmError, "Errors in the input parameters"),
    ("7", "", RetailCrmError, "Errors in the input parameters"),
    ("99", "busy", RetailCrmNotFound, "Not found"),
])
def test_the_simulator_refuses_as_retailcrm_does(crm, user_id, status, error, said):
    crm.add_user(7)
    client = RetailCrmClient(crm.url, API_KEY)
    with pytest.raises(error) as raised:
        client.user_status(user_id, status)
    assert raised.value.error_msg == said and not raised.value.retryable
    assert crm.status_changes() == []


def test_the_simulator_wants_a_known_api_key_for_a_status(crm):
    crm.add_user(7)
    with pytest.raises(RetailCrmError) as raised:
        RetailCrmClient(crm.url, "unknown-key").user_status("7", "busy")
    assert raised.value.status == 403
