"""Test-wide fixtures: a network that stays on this machine, a clean Redis, real processes."""

from __future__ import annotations

import ipaddress
import socket

import pytest
import redis
from django.conf import settings

from tests.support.processes import ManagedProcess, ready_celery_worker, subprocess_env, wait_for

pytest_plugins = ["tests.support.browser"]

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address) -> bool:
    if not isinstance(address, tuple):
        return True  # unix sockets
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a name that would need DNS: not local


class NetworkBlocked(RuntimeError):
    pass


def _guarded(real):
    def connect(self, address):
        if not _is_local(address):
            raise NetworkBlocked(
                f"test tried to reach {address!r}: the network is blocked; mark the test @pytest.mark.network"
            )
        return real(self, address)

    return connect


@pytest.fixture(autouse=True)
def _block_network(request, monkeypatch):
    if request.node.get_closest_marker("network"):
        return
    monkeypatch.setattr(socket.socket, "connect", _guarded(_real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded(_real_connect_ex))


@pytest.fixture(autouse=True)
def _no_console_heap_freeze(settings):
    """daphne freezes its consoles' objects (ctihub/lib/console_heap.py); in the tests' own process that would
    keep every later test's cyclic garbage. tests/test_console_heap.py turns it on where it is the subject."""
    settings.CONSOLE_HEAP_FREEZE = False


@pytest.fixture(autouse=True)
def _language_reset():
    """Each test starts in the default language. Django's LocaleMiddleware activates a request's language on
    the thread and never deactivates it: a test client request in French left the next test's refusals
    in French."""
    yield
    from django.utils import translation

    translation.deactivate()


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test its own channels-redis layer: one instance keeps receive locks and buffers of
    the event loop that used it, and a test's asyncio.run is a new loop. A console test once
    waited forever on a receive left behind by the test before it."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(scope="session", autouse=True)
def _clean_redis():
    if settings.EMBEDDED_REDIS:
        return
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def celery_env(django_db_setup, django_db_blocker) -> dict[str, str]:
    with django_db_blocker.unblock():
        # It lives as long as the session: holding PBX sockets it would take later tests' listeners
        # (and keep a database session that every hub's teardown waited 10 s on).
        return subprocess_env(LISTENER_SUPERVISOR="false")


@pytest.fixture(scope="session")
def live_celery_worker(celery_env):
    """A real Celery worker process on the test Redis and the test database."""
    with ready_celery_worker("celery-worker", celery_env) as worker:
        yield worker


@pytest.fixture
def published(monkeypatch) -> list[int]:
    """Cards the code under test published (call ids, one per card), instead of pushing them to Redis."""
    from concurrent.futures import Future

    cards: list[int] = []

    def publish_cards(calls):
        cards.extend(call.pk for call in calls)
        done = Future()
        done.set_result(None)
        return done

    monkeypatch.setattr("telephony.publish.publish_call", lambda call_id, wait=False: cards.append(call_id))
    monkeypatch.setattr("telephony.publish.publish_cards", publish_cards)
    return cards


@pytest.fixture
def processes():
    """Collects ManagedProcess objects started by a test and stops them all afterwards."""
    started: list[ManagedProcess] = []
    yield started
    for process in reversed(started):
        process.stop()


# Fast supervisor timings so takeover and reconnect tests run in seconds, not minutes.
FAST_LISTENERS = {
    "LISTENER_LEASE_TTL_MS": "3000",
    "LISTENER_SCAN_SECONDS": "1",
    "LISTENER_KEEPALIVE_SECONDS": "5",
    "LISTENER_BACKOFF_CAP_SECONDS": "2",
}


@pytest.fixture
def hub_settings() -> dict[str, str]:
    """Extra settings for the hub's processes; a test module overrides this fixture to add its own."""
    return {}


@pytest.fixture
def hub(django_db_setup, django_db_blocker, hub_settings):
    """Simulator + daphne + one Celery worker holding PBX sockets, on the test database and Redis."""
    from tests.support.processes import Hub

    with django_db_blocker.unblock():
        env = subprocess_env(**{**FAST_LISTENERS, **hub_settings})
        already_there = database_sessions()  # a session-wide Celery worker's, say: not the hub's to wait for
    running = Hub(env)
    try:
        yield running
    finally:
        running.stop()
        with django_db_blocker.unblock():
            _wait_for_other_sessions_to_close(keep=already_there)


def database_sessions() -> set[int]:
    """The backends of the test database other than this process's own connection."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return {pid for (pid,) in cursor.fetchall()}


def _wait_for_other_sessions_to_close(timeout: float = 10, keep: set[int] = frozenset()) -> None:
    """PostgreSQL ends a dead client's backend a moment after it exits; dropping the
    test database before then fails, so wait for the processes' sessions to go
    (all but ``keep``, those that were there before and stay: waiting on them only cost 10 s a test)."""
    try:
        wait_for(lambda: not (database_sessions() - keep), timeout, interval=0.1,
                 what="the hub's database sessions to close")
    except TimeoutError:
        pass  # reported by pytest-django's teardown if it matters


@pytest.fixture
def admin_user(db, django_user_model):
    """pytest-django's ``admin_user`` ("admin", password "password"), its password hashed once per process."""
    from tests.factories import password_hash

    user, _ = django_user_model.objects.get_or_create(username="admin", defaults={
        "email": "admin@example.com", "is_staff": True, "is_superuser": True, "password": password_hash("password")})
    return user
