"""What every benchmark shares: Django on a benchmark database (PostgreSQL) and Redis, and its figures' format.

Benchmarks run against real PostgreSQL and Redis, never the test database:
``BENCH_DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/ctihub_bench``,
created if missing, migrated, emptied) and ``BENCH_REDIS_URL`` (default db 14,
flushed). Each prints one ``name: value unit`` line per figure so runs compare.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/ctihub_bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"


def setup_django() -> None:
    """Point Django at the benchmark database and Redis, create and migrate, and empty them."""
    sys.path.insert(0, str(REPO))
    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ctihub.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # As in production: DEBUG's cursor wrapper costs every query. Its keys are then required; the
    # benchmark database is emptied at each run, so throwaway ones do.
    os.environ.setdefault("DEBUG", "false")
    if os.environ["DEBUG"] == "false":
        import secrets

        from cryptography.fernet import Fernet

        os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
        os.environ.setdefault("FIELD_ENCRYPTION_KEY", Fernet.generate_key().decode())
    _create_database(database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL).flushdb()


def _create_database(url: str) -> None:
    import psycopg

    parts = urlparse(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(host=parts.hostname, port=parts.port or 5432, user=parts.username or "postgres",
                         password=parts.password, dbname="postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


@contextlib.contextmanager
def no_pauses_of_our_own():
    """The load generator's own garbage collection off while it measures.

    A full collection of this process (its threads, futures, sockets and samples) paused every
    thread for 50-90 ms, and each request in flight was charged for it: makeCallUrl's overhead p99
    read 28-58 ms, and 4.5-4.9 ms without those pauses. What is measured is ctihub, not the
    benchmark; ctihub's processes keep their own collector as in production.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def figure(name: str, value, unit: str = "", target: str = "") -> None:
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    suffix = f"  (target {target})" if target else ""
    print(f"{name}: {text} {unit}{suffix}".rstrip(), flush=True)


def percentiles(samples_ms: list[float], prefix: str) -> None:
    ordered = sorted(samples_ms)
    if not ordered:
        figure(f"{prefix}_samples", 0)
        return

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    figure(f"{prefix}_p50", pct(50), "ms")
    figure(f"{prefix}_p95", pct(95), "ms")
    figure(f"{prefix}_p99", pct(99), "ms")
    figure(f"{prefix}_max", ordered[-1], "ms")
    figure(f"{prefix}_mean", statistics.fmean(ordered), "ms")
