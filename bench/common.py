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
import time
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


# --- What every benchmark prints about the machine, and how it fails -----------------------------

CALIBRATION_LOOP = 2_000_000


def calibration_ms() -> float:
    """The time of a fixed pure-Python CPU loop (best of three), so figures from two machines compare.

    A machine half as fast prints about twice the figure; divide a CPU cost by it to compare runs.
    """
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        total = 0
        for n in range(CALIBRATION_LOOP):
            total += n * n % 7
        best = min(best, time.process_time() - t0)
    return best * 1000


def machine_figures(label: str = "") -> None:
    """The calibration loop's time and the load average, printed at the start (and end) of a run."""
    prefix = f"{label}_" if label else ""
    figure(f"{prefix}calibration_loop", calibration_ms(), "ms")
    one, five, fifteen = os.getloadavg()
    figure(f"{prefix}load_average", f"{one:.2f} / {five:.2f} / {fifteen:.2f}", "(1 / 5 / 15 min)")


# What a benchmark has so far (consoles connected, errors by kind, ...): printed if it fails.
progress: dict[str, object] = {}


def run(main) -> None:
    """Run a benchmark's ``main``: on any failure print what it has and the error, and exit 1.

    Never a bare traceback: the figures printed so far stay, ``progress`` is printed, then one line
    ``failed: <kind>: <message>``. ``BENCH_TRACEBACK=1`` prints the traceback too.
    """
    import traceback

    machine_figures()
    try:
        main()
    except KeyboardInterrupt:
        _print_progress()
        print("failed: interrupted", flush=True)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code not in (0, None):
            _print_progress()
        raise
    except BaseException as exc:  # noqa: BLE001 - a benchmark reports every failure the same way
        _print_progress()
        if os.environ.get("BENCH_TRACEBACK"):
            traceback.print_exc()
        message = str(exc) or repr(exc)
        print(f"failed: {type(exc).__name__}: {message}", flush=True)
        sys.exit(1)
    machine_figures("end")


def _print_progress() -> None:
    for key, value in progress.items():
        figure(f"so_far_{key}", value if not isinstance(value, dict) else
               ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "none")
