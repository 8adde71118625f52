"""Call events ahead of everything else: their own Celery queue, consumed first; uploads gathered, one drain at a
time; and few statements per event."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from django.conf import settings

from crm_sync import tasks
from crm_sync.models import CrmCallSync
from ctihub.celery import app
from ctihub.celery_steps import consumes_default_queue
from ctihub.lib.shared_redis import shared_redis


@pytest.mark.parametrize("task", ["crm_sync.tasks.sync_call_task", "crm_sync.tasks.route_call_task"])
def test_it_routes_a_call_event_and_a_ringing_calls_lookup_to_the_call_events_queue(task):
    assert app.amqp.router.route({}, task)["queue"].name == settings.CRM_EVENTS_QUEUE


def test_it_leaves_uploads_and_the_rest_on_the_default_queue():
    for task in ("crm_sync.tasks.upload_calls_task", "crm_sync.tasks.sweep_task", "crm_sync.tasks.register_integration_task"):
        assert app.amqp.router.route({}, task)["queue"].name == settings.CELERY_TASK_DEFAULT_QUEUE


def test_it_has_every_worker_take_call_events_before_anything_else():
    # A worker started without -Q consumes every queue of task_queues; kombu's "sorted" order lists them by
    # name in every BRPOP, and the first non-empty list answers.
    names = list(app.amqp.queues)
    assert set(names) == {settings.CRM_EVENTS_QUEUE, settings.CELERY_TASK_DEFAULT_QUEUE}
    assert sorted(names)[0] == settings.CRM_EVENTS_QUEUE
    assert app.conf.broker_transport_options["queue_order_strategy"] == "sorted"


def _worker(consume_from):
    return SimpleNamespace(app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=consume_from))))


def test_it_holds_pbx_sockets_only_in_workers_that_consume_the_default_queue():
    assert consumes_default_queue(_worker(None))  # no -Q: every queue
    assert consumes_default_queue(_worker({"celery": object(), "call-events": object()}))
    assert not consumes_default_queue(_worker({"call-events": object()}))  # the call-events worker


@pytest.fixture
def drains(monkeypatch):
    """Upload tasks queued (integration id, countdown), recorded instead of sent; the drain keys cleared."""
    queued: list[tuple[int, float | None]] = []
    monkeypatch.setattr(tasks.upload_calls_task, "apply_async",
                        lambda args, countdown=None: queued.append((args[0], countdown)))
    redis = shared_redis()
    for pattern in ("ctihub:retailcrm:drain-scheduled:*", "ctihub:retailcrm:draining:*"):
        for key in redis.scan_iter(pattern):
            redis.delete(key)
    return queued


def test_it_gathers_the_uploads_of_calls_ending_together_into_one_drain(drains):
    for _ in range(15):  # fifteen calls of one integration end within the second
        tasks.schedule_drain(41, tasks.UPLOAD_GATHER_SECONDS)
    tasks.schedule_drain(42, tasks.UPLOAD_GATHER_SECONDS)
    assert drains == [(41, tasks.UPLOAD_GATHER_SECONDS), (42, tasks.UPLOAD_GATHER_SECONDS)]


def test_it_looks_again_shortly_when_another_drain_of_the_outbox_is_running(drains, monkeypatch):
    ran = []
    monkeypatch.setattr(tasks.crm_domain, "upload_outbox", lambda integration_id: ran.append(integration_id))
    shared_redis().set(tasks.DRAINING_KEY.format(41), "another worker's", px=60_000)
    tasks.upload_calls_task(41)
    assert ran == [] and drains == [(41, tasks.UPLOAD_GATHER_SECONDS)]


def test_it_releases_the_drain_of_an_outbox_once_it_is_done(drains, monkeypatch):
    monkeypatch.setattr(tasks.crm_domain, "upload_outbox",
                        lambda integration_id: SimpleNamespace(batches=0))
    tasks.upload_calls_task(41)
    tasks.upload_calls_task(41)
    assert drains == [] and not shared_redis().exists(tasks.DRAINING_KEY.format(41))


@pytest.mark.django_db
def test_it_sends_a_call_event_in_a_dozen_statements(world):
    # The call-events worker spent 57% of its busy time waiting on PostgreSQL: 17 statements for a start
    # event (the row and the call read twice, the shop written apart, the state refreshed for nothing).
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from crm_sync import domain as crm_domain
    from crm_sync.tests.test_sync import end, ringing

    call = ringing(world)
    with CaptureQueriesContext(connection) as start:
        assert crm_domain.sync_call(call.pk).sent == ["in"]
    end(call, answered=False)
    with CaptureQueriesContext(connection) as hangup:
        assert crm_domain.sync_call(call.pk).sent == ["hangup"]
    assert len(start.captured_queries) <= 12, [q["sql"][:80] for q in start.captured_queries]
    assert len(hangup.captured_queries) <= 13, [q["sql"][:80] for q in hangup.captured_queries]
    row = CrmCallSync.objects.get(call=call)
    assert (row.site_code, row.external_phone) == ("shop1", "+74999999999")  # the shop, written with the event
    assert row.outbox_at is not None


def test_it_runs_a_task_again_soon_when_the_database_dropped_its_connection(monkeypatch):
    # A call's start event is stale after a minute: it must not wait for the sweep. (Run eagerly, each
    # retry runs at once; in a worker a second apart, on a new connection.)
    from django.db import OperationalError

    tries = []

    def dropped(call_id):
        tries.append(call_id)
        raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(tasks.crm_domain, "sync_call", dropped)
    tasks.sync_call_task.apply(args=[1])
    assert len(tries) == 1 + app.Task.retry_kwargs["max_retries"]


def test_it_gives_every_task_of_the_hub_the_retry_on_a_dropped_connection():
    from django.db import InterfaceError, OperationalError

    # Every task module, as a worker imports them at start: a test process has only those imported so far.
    app.loader.import_default_modules()
    ours = [task for name, task in app.tasks.items() if name.split(".")[0] in ("crm_sync", "telephony", "ctihub")]
    assert len(ours) > 10
    for task in ours:
        assert {OperationalError, InterfaceError} <= set(task.autoretry_for), task.name


@pytest.fixture
def hand_off_queue(monkeypatch):
    """The call-events queue, renamed for this test alone (no events worker of another test takes from it)."""
    from ctihub.lib import broker

    name = f"test-call-events-{uuid.uuid4().hex}"
    found = broker._direct(tasks.sync_call_task)
    assert found is not None and found[0] == settings.CRM_EVENTS_QUEUE
    monkeypatch.setitem(broker._direct_queues, tasks.sync_call_task.name, (name, *found[1:]))
    yield name
    shared_redis().delete(name)


def _burst(account, terminal, pbx_call_id="-428"):
    from django.utils import timezone

    from telephony import updates as u

    return [u.CallUpdate(account_id=account.pk, pbx_call_id=pbx_call_id, state=u.RINGING, kind="callRinging",
                         payload={}, occurred_at=timezone.now(), terminal_pbx_id=terminal.pbx_id, direction=u.INBOUND,
                         remote_number="+33612345678")]


def _queued_syncs(queue_name) -> list[list]:
    import base64
    import json

    messages = [json.loads(raw) for raw in reversed(shared_redis().lrange(queue_name, 0, -1))]  # oldest first
    return [(m["headers"]["task"].rsplit(".", 1)[-1], json.loads(base64.b64decode(m["body"]))[0]) for m in messages]


@pytest.mark.django_db
def test_it_hands_a_frames_call_to_the_crm_in_the_cards_pipeline_without_apply_async(
        hand_off_queue, monkeypatch, django_capture_on_commit_callbacks):
    # Celery's apply_async, once a change, was a third of the socket worker's CPU for a frame.
    from celery import Task

    from crm_sync.models import RetailCrmIntegration
    from telephony import publish
    from telephony.domain import apply_call_updates
    from telephony.models import Call
    from telephony.publish import publisher
    from tests.factories import make_account, make_terminal

    RetailCrmIntegration.objects.create(name="shop", crm_url="http://127.0.0.1:9/", api_key="k")
    account = make_account()
    terminal = make_terminal(account)
    applied = []
    monkeypatch.setattr(Task, "apply_async", lambda task, *args, **kwargs: applied.append(task.name))
    pipelines = []  # the commands of each round trip the publisher sends
    real_pack = publish._pack

    def counting(commands):
        pipelines.append([command[0] for command in commands])
        return real_pack(commands)

    monkeypatch.setattr(publish, "_pack", counting)
    with django_capture_on_commit_callbacks(execute=True):
        apply_call_updates(_burst(account, terminal))
    publisher.drain(timeout=10)
    call = Call.objects.get()
    assert _queued_syncs(hand_off_queue) == [("sync_call_task", [call.pk])]
    assert applied == []
    pushed = [commands for commands in pipelines if "LPUSH" in commands]
    assert len(pushed) == 1 and "ZRANGE" in pushed[0]  # with the card's groups, in one round trip


@pytest.mark.django_db
def test_it_queues_the_hand_off_through_celery_when_the_push_fails(hand_off_queue, monkeypatch,
                                                                  django_capture_on_commit_callbacks):
    from celery import Task

    from crm_sync.models import RetailCrmIntegration
    from ctihub.lib import broker
    from telephony.domain import apply_call_updates
    from telephony.models import Call
    from telephony.publish import publisher
    from tests.factories import make_account, make_terminal

    RetailCrmIntegration.objects.create(name="shop", crm_url="http://127.0.0.1:9/", api_key="k")
    account = make_account()
    terminal = make_terminal(account)
    applied = []
    monkeypatch.setattr(Task, "apply_async", lambda task, args=(), **kwargs: applied.append((task.name, args)))

    def refused(tasks_):
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(broker, "task_messages", refused)
    with django_capture_on_commit_callbacks(execute=True):
        apply_call_updates(_burst(account, terminal))
    publisher.drain(timeout=10)
    assert applied == [(tasks.sync_call_task.name, (Call.objects.get().pk,))]
