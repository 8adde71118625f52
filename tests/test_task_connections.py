"""A real Celery worker's tasks keep their PostgreSQL connection by Django's rule (CONN_MAX_AGE), not one a task.

Celery's Django fix-up closed every connection before and after each task: every call event sent to retailCRM
paid for a new PostgreSQL session (issue 16). The suite's own workers run with ``DATABASE_CONN_MAX_AGE=0``
(``scripts/test``), so this worker is started with the production default.
"""

from __future__ import annotations

import psutil
import pytest
from django.db import connection

from ctihub.celery import app
from ctihub.tasks import ping_task
from tests.support.processes import ready_celery_worker, subprocess_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

QUEUE = "kept-connections"


@pytest.fixture
def kept_worker(django_db_blocker):
    with django_db_blocker.unblock():
        env = subprocess_env(LISTENER_SUPERVISOR="false", DATABASE_CONN_MAX_AGE="60")
    # A queue of its own: the suite's session-wide worker must not take these tasks.
    try:
        with ready_celery_worker("celery-kept-connections", env, "-Q", QUEUE) as worker:
            yield worker
    finally:
        # Sending to a queue Celery did not know declared it in the app's queues: leave the app as it was.
        app.amqp.queues.pop(QUEUE, None)


def database_ports(worker) -> set[int]:
    """The worker's local ports of its connections to PostgreSQL (threads pool: one process)."""
    port = int(connection.settings_dict.get("PORT") or 5432)
    return {c.laddr.port for c in psutil.Process(worker.process.pid).net_connections("tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED}


def ping(timeout: float = 30) -> dict:
    return ping_task.apply_async(queue=QUEUE).get(timeout=timeout)


def test_it_keeps_a_tasks_database_connection_for_the_next_tasks(kept_worker):
    assert ping()["pong"]
    first = database_ports(kept_worker)
    assert len(first) == 1, "the task's connection was closed after it"
    for _ in range(5):
        assert ping()["pong"]
    assert database_ports(kept_worker) == first  # the same connection, not a new one a task


def test_it_gives_the_next_task_a_new_connection_once_the_database_dropped_its_own(kept_worker):
    assert ping()["pong"]
    [port] = database_ports(kept_worker)
    with connection.cursor() as cursor:  # what a failover or an admin's pg_terminate_backend does
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE client_port = %s", [port])
        assert cursor.fetchone() == (True,)
    wait_for(lambda: port not in database_ports(kept_worker), timeout=10, what="the connection to be gone")
    assert ping()["pong"]  # Django's health check (or HubTask's retry) found it gone and connected again
    assert database_ports(kept_worker) and port not in database_ports(kept_worker)
