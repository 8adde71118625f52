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

import shutil
import subprocess
import tempfile

import pytest

from tests.faults.harness import seed_world
from tests.support.processes import Hub, free_port, subprocess_env, wait_for

# The root conftest's fast supervisor timings: takeover and reconnects in seconds.
from conftest import FAST_LISTENERS, _wait_for_other_sessions_to_close  # noqa: E402  (the root conftest)

FAULT_SETTINGS = {
    **FAST_LISTENERS,
    "LOG_LEVEL": "INFO",
    # Agents' HTTP calls and CRM sync should not queue behind a PBX that takes seconds to fail.
    "HTTP_CONNECT_TIMEOUT_MS": "1000",
    "HTTP_READ_TIMEOUT_MS": "3000",
}


class PrivateRedis:
    """A redis-server of our own on a free port, that a test may stop and start again (the shared one never)."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ctihub-fault-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> "PrivateRedis":
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        wait_for(lambda: redis.Redis(port=self.port, socket_timeout=1).ping(), 10, what="the private redis-server")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self, down_seconds: float = 0) -> None:
        import time

        self.stop()
        time.sleep(down_seconds)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_fault_hub(django_db_blocker, workers: int = 2, **settings: str) -> Hub:
    with django_db_blocker.unblock():
        env = subprocess_env(**{**FAULT_SETTINGS, **settings})
    hub = Hub(env)
    try:
        hub.start(workers=workers, web=True)
    except BaseException:
        hub.stop()
        raise
    return hub


def _empty_database(django_db_blocker) -> None:
    from django.core.management import call_command

    with django_db_blocker.unblock():
        _wait_for_other_sessions_to_close()
        call_command("flush", interactive=False, verbosity=0)


@pytest.fixture(scope="module")
def fault_db(django_db_setup, django_db_blocker):
    """The test database, open to the whole module and emptied after it."""
    django_db_blocker.unblock()
    try:
        yield
    finally:
        django_db_blocker.restore()
        _empty_database(django_db_blocker)


@pytest.fixture(scope="module")
def fault_hub(fault_db, django_db_blocker):
    """Simulator + daphne + two Celery workers, on the test database and the test Redis."""
    hub = start_fault_hub(django_db_blocker)
    try:
        yield hub
    finally:
        hub.stop()


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
