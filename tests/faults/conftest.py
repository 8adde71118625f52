"""Fixtures of the fault suite: one running, seeded hub per module, and a private Redis when a test breaks Redis.

Starting the simulator, daphne and two workers costs tens of seconds on a small machine, so a module
shares one hub (``fault_hub``) and one seeded world (``fault_world``): each test drives its own calls
and checks only those, and every test leaves the hub whole (faults end, restarted processes come back).
The world is committed by the module fixture and the database emptied at the module's end. Mark the tests
``pytest.mark.django_db`` (not transactional: a transactional test would empty the tables after each
test); the marker is also what makes pytest-django create the test database. What a test writes itself
stays in its rolled-back transaction and is unseen by the hub: keep a test's own writes to none.
"""

from __future__ import annotations

import pytest

from conftest import _wait_for_other_sessions_to_close, database_sessions  # noqa: E402  (the root conftest)
from tests.faults.harness import ISTRA_PASSWORDS, RCC_PASSWORD, PrivateRedis, fault_settings, seed_world, start_hub
from tests.support.processes import Hub, subprocess_env
from tests.support.retailcrm_sim import API_KEY
from tests.support.telepo_sim import TICKET as TELEPO_TICKET


def start_fault_hub(django_db_blocker, workers: int = 2, settings_of=fault_settings, **settings: str) -> Hub:
    """A hub on the test database and (unless ``settings`` say otherwise) the test Redis."""
    with django_db_blocker.unblock():
        env = subprocess_env(**settings_of(**settings))
    return start_hub(env, workers)


def _empty_database(django_db_blocker, keep: set[int]) -> None:
    from django.core.management import call_command

    with django_db_blocker.unblock():
        _wait_for_other_sessions_to_close(keep=keep)
        call_command("flush", interactive=False, verbosity=0)


@pytest.fixture(scope="module")
def fault_db(django_db_setup, django_db_blocker):
    """The test database, open to the whole module and emptied after it."""
    django_db_blocker.unblock()
    already_there = database_sessions()
    try:
        yield
    finally:
        django_db_blocker.restore()
        _empty_database(django_db_blocker, already_there)


# Every credential the fault suite hands the hub: none may reach a line the hub writes, whatever broke.
WEBHOOK_SECRET = "whsec-faults-7c2e0d"  # the Telepo fault tests' CRM connector secret
SECRETS = [RCC_PASSWORD, *ISTRA_PASSWORDS, API_KEY, TELEPO_TICKET, WEBHOOK_SECRET]


def assert_logs_keep_secrets(hub: Hub) -> None:
    """The hub's own logs (daphne and every worker; the simulator is the vendor's side) after a run of faults."""
    from crm_sync.models import RetailCrmIntegration

    client_ids = [i.client_id for i in RetailCrmIntegration.objects.all() if i.client_id]
    for process in hub.processes:
        if process is getattr(hub, "simulator", None):
            continue
        text = process.log()
        for secret in SECRETS + client_ids:
            assert secret not in text, f"a credential ({secret[:4]}...) is in {process.log_path}"


@pytest.fixture(scope="module")
def fault_hub(request, fault_db, django_db_blocker):
    """Simulator + daphne + two Celery workers, on the test database and the test Redis; a module's
    ``HUB_SETTINGS`` (a function like ``harness.fault_settings``) says how the hub is set up, and
    ``HUB_WORKERS`` how many workers it runs."""
    hub = start_fault_hub(django_db_blocker, workers=getattr(request.module, "HUB_WORKERS", 2),
                          settings_of=getattr(request.module, "HUB_SETTINGS", fault_settings))
    try:
        yield hub
    finally:
        hub.stop()
    assert_logs_keep_secrets(hub)


@pytest.fixture(scope="module")
def fault_world(fault_hub):
    return seed_world(fault_hub)


@pytest.fixture(scope="module")
def private_redis():
    redis_server = PrivateRedis().start()
    try:
        yield redis_server
    finally:
        redis_server.cleanup()
