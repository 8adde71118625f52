"""The Celery app: JSON only, Redis broker, beat schedule from settings.

Tasks are short ``*_task`` functions that take ids and call the domain; the PBX
sockets are not tasks (see ``telephony.sockets.supervisor``).
"""

import os

from celery import Celery, Task
from celery.signals import after_setup_logger, beat_init, task_postrun, task_prerun, worker_init, worker_ready
from django.db import InterfaceError, OperationalError

from ctihub.lib import broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ctihub.settings")


class HubTask(Task):
    """Every task of the hub: one whose database connection was dropped runs again a second later.

    A restart, a failover or ``pg_terminate_backend`` fails the one task using the connection; the
    connection, unusable, is closed after it (``_close_old_connections``), so the retry gets a new one.
    Tasks take ids and are idempotent (acks late, claims on rows), so a retry is safe, and nothing waits
    for a sweep: a retailCRM start event left to one went stale and was never sent.
    """

    autoretry_for = (OperationalError, InterfaceError)
    retry_kwargs = {"max_retries": 3, "countdown": 1}
    retry_jitter = False


app = Celery("ctihub", task_cls=HubTask)
broker.use_app(app)  # the event path pushes task messages to this app's broker itself
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()  # every installed app's tasks.py, the PBX providers' included
app.steps["worker"].add("ctihub.celery_steps:ListenerSupervisorStep")


def _ensure_embedded_redis(**_kwargs):
    from django.conf import settings

    if settings.EMBEDDED_REDIS:
        from ctihub.lib import embedded_redis

        embedded_redis.ensure_running(settings.VAR_DIR)


def _switch_threads_sooner(**_kwargs):
    from ctihub.lib.threads import use_configured_switch_interval

    use_configured_switch_interval()
    from ctihub.lib import card_trace

    card_trace.watch_pauses("worker")  # only with CARD_TRACE (the pop-up benchmark)


def _freeze_what_startup_made(**_kwargs):
    """Everything the worker loaded to start (Django, Celery, kombu, the models, the tasks: some 130,000
    objects) lives as long as it does. Left to the collector, each full collection walked all of it with
    every thread of the process stopped: 75-165 ms, every frame and card in flight late by as much (issue
    16's pop-up p99). Frozen, as daphne does (ctihub/asgi.py), a full collection walks only what came after."""
    import gc

    gc.collect()
    gc.freeze()


# Celery's Django fix-up closes every database connection before and after each task unless
# CELERY_DB_REUSE_MAX is set, whatever CONN_MAX_AGE says: each call event's task (and each hand-off,
# each upload) opened a PostgreSQL session of its own, a server process started and authenticated for
# a task of a few queries (issue 16: 2.8% of the events worker's own samples connecting and closing,
# and the server's side on top). Tasks keep their connection by Django's own rule instead, as a web
# request does: closed once older than CONN_MAX_AGE, or after an error left it unusable (a retry of
# HubTask then gets a new one, as before).
app.conf.CELERY_DB_REUSE_MAX = 2**62  # the fix-up's count of tasks between two closes: never


def _close_old_connections(**_kwargs):
    from django.db import close_old_connections

    close_old_connections()


task_prerun.connect(_close_old_connections, weak=False)
task_postrun.connect(_close_old_connections, weak=False)
worker_init.connect(_ensure_embedded_redis, weak=False)
worker_init.connect(_switch_threads_sooner, weak=False)
worker_ready.connect(_freeze_what_startup_made, weak=False)
beat_init.connect(_ensure_embedded_redis, weak=False)


def _structured_logs(logger=None, **_kwargs):
    """Celery sets up the worker's own log handlers: give them the ids, the masking and LOG_FORMAT=json too."""
    from django.conf import settings

    from ctihub.lib.logs import ContextFilter, JsonFormatter

    for handler in (logger or __import__("logging").getLogger()).handlers:
        handler.addFilter(ContextFilter())
        if settings.LOG_FORMAT == "json":
            handler.setFormatter(JsonFormatter())


after_setup_logger.connect(_structured_logs, weak=False)
