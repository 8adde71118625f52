"""Claims and the drain lock are short leases renewed while their holder works: a worker that dies holding one
frees its calls within a lease, not after minutes (a worker killed mid-drain once held an outbox for five)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest

from crm_sync import claims, tasks
from crm_sync import domain as crm_domain
from crm_sync.models import CrmCallSync
from crm_sync.tests.test_sync import end, ringing
from ctihub.lib.shared_redis import shared_redis


@pytest.fixture
def fast_keeper(monkeypatch):
    """A keeper renewing every 50 ms, in place of the process's (which renews every few seconds)."""
    keeper = claims.LeaseKeeper(every=0.05)
    monkeypatch.setattr(claims, "keeper", keeper)
    monkeypatch.setattr(tasks, "keeper", keeper)
    return keeper


def test_it_renews_a_held_lease_until_its_holder_lets_go():
    keeper = claims.LeaseKeeper(every=0.02)
    renewals = []
    with keeper.keep("a test lease", lambda: renewals.append(time.monotonic())):
        time.sleep(0.3)
        assert keeper.held() == ["a test lease"]
    held_for = len(renewals)
    time.sleep(0.1)
    assert held_for >= 3 and len(renewals) == held_for and keeper.held() == []


def test_it_keeps_renewing_the_other_leases_when_one_renewal_fails(caplog):
    keeper = claims.LeaseKeeper(every=0.02)
    renewals = []

    def broken():
        raise ConnectionError("redis went away")

    with caplog.at_level(logging.WARNING, logger="crm_sync.claims"):
        with keeper.keep("the drain lock of integration 7", broken), keeper.keep("fine", lambda: renewals.append(1)):
            time.sleep(0.2)
    assert len(renewals) >= 3
    assert "could not renew the lease of the drain lock of integration 7" in caplog.text


def test_it_takes_the_drain_lock_for_a_lease_of_seconds_not_minutes(monkeypatch):
    # What a killed worker leaves behind is what the drain took: nothing renews it once the worker is gone.
    key = tasks.DRAINING_KEY.format(45)
    redis = shared_redis()
    redis.delete(key)
    ttl = []
    monkeypatch.setattr(tasks.crm_domain, "upload_outbox",
                        lambda integration_id: ttl.append(redis.pttl(key)) or SimpleNamespace(batches=0))
    tasks.upload_calls_task(45)
    assert len(ttl) == 1 and 0 < ttl[0] <= 30_000
    assert claims.RENEW_EVERY * 4 <= claims.CLAIM_LEASE.total_seconds()  # renewed well inside the lease


@pytest.mark.django_db(transaction=True)
def test_it_keeps_a_slow_uploads_claim_alive_past_the_lease(world, fast_keeper, monkeypatch):
    # The keeper renews on its own connection: the test's rows must be committed (transaction=True).
    monkeypatch.setattr(claims, "CLAIM_LEASE", timedelta(seconds=0.5))
    call = end(ringing(world))
    crm_domain.sync_call(call.pk)
    seen_during_upload = []
    upload = crm_domain._upload_rows

    def slow_upload(client, integration, rows, token, report, record_urls):
        time.sleep(1.5)  # three leases: without renewals another drain could claim these calls now
        seen_during_upload.append(list(crm_domain._due_outbox(world.integration.pk).values_list("call_id", flat=True)))
        return upload(client, integration, rows, token, report, record_urls)

    monkeypatch.setattr(crm_domain.outbox, "_upload_rows", slow_upload)
    assert crm_domain.upload_outbox(world.integration.pk).uploaded == 1
    assert seen_during_upload == [[]]
    assert CrmCallSync.objects.get(call=call).upload_claim == ""


@pytest.mark.django_db(transaction=True)
def test_it_lets_a_claim_lapse_once_nobody_renews_it(world, monkeypatch):
    # The other side: a holder that stopped (its worker killed) frees the call after the lease.
    monkeypatch.setattr(claims, "CLAIM_LEASE", timedelta(seconds=0.3))
    call = end(ringing(world))
    crm_domain.sync_call(call.pk)
    assert [row.call_id for row in crm_domain.claim_batch(world.integration.pk, "a-dead-worker")] == [call.pk]
    assert crm_domain.claim_batch(world.integration.pk, "another") == []
    time.sleep(0.5)
    assert crm_domain.upload_outbox(world.integration.pk).uploaded == 1


@pytest.mark.django_db(transaction=True)
def test_it_keeps_an_events_claim_alive_while_retailcrm_takes_its_time(world, fast_keeper, monkeypatch):
    monkeypatch.setattr(claims, "CLAIM_LEASE", timedelta(seconds=0.5))
    call = ringing(world)
    claimed_while_sending = []
    send = crm_domain._send_event

    def slow_send(row, *args, **kwargs):
        time.sleep(1.5)
        claimed_while_sending.append(crm_domain._claim(row.pk, "events", "another-worker"))
        return send(row, *args, **kwargs)

    monkeypatch.setattr(crm_domain.events, "_send_event", slow_send)
    assert crm_domain.sync_call(call.pk).sent == ["in"]
    assert claimed_while_sending == [False]
    assert [e["type"] for e in world.crm.events()] == ["in"]


def test_it_renews_the_drain_lock_while_the_drain_runs_and_releases_it_after(fast_keeper, monkeypatch):
    monkeypatch.setattr(tasks, "DRAIN_LEASE_MS", 300)
    key = tasks.DRAINING_KEY.format(43)
    redis = shared_redis()
    redis.delete(key)
    during = []

    def slow_drain(integration_id):
        time.sleep(1.0)  # three leases
        during.append(redis.pttl(key))
        return SimpleNamespace(batches=0)

    monkeypatch.setattr(tasks.crm_domain, "upload_outbox", slow_drain)
    tasks.upload_calls_task(43)
    assert len(during) == 1 and 0 < during[0] <= 300
    assert not redis.exists(key)


def test_it_drains_once_a_dead_workers_drain_lock_lapsed(monkeypatch):
    monkeypatch.setattr(tasks, "DRAIN_LEASE_MS", 200)
    key = tasks.DRAINING_KEY.format(44)
    redis = shared_redis()
    redis.set(key, "a killed worker's token", px=tasks.DRAIN_LEASE_MS)
    drained, scheduled = [], []
    monkeypatch.setattr(tasks.crm_domain, "upload_outbox",
                        lambda integration_id: drained.append(integration_id) or SimpleNamespace(batches=0))
    monkeypatch.setattr(tasks, "schedule_drain", lambda integration_id, delay: scheduled.append(integration_id))
    tasks.upload_calls_task(44)
    assert drained == [] and scheduled == [44]  # while the lease runs, the holder may be alive
    time.sleep(0.3)
    tasks.upload_calls_task(44)
    assert drained == [44]

