"""The Celery app: JSON only, Redis broker, beat schedule from settings.

Tasks are short ``*_task`` functions that take ids and call the domain; the PBX
sockets are not tasks (see ``telephony.supervisor``).
"""

import os

from celery import Celery
from celery.signals import beat_init, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ctihub.settings")

app = Celery("ctihub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.autodiscover_tasks(["telephony.providers.telepo"])  # reconcile tasks live with their provider
app.autodiscover_tasks(["telephony.providers.istra_enduser"])  # call-history backfill, caller-ID restore
app.steps["worker"].add("ctihub.celery_steps:ListenerSupervisorStep")


def _ensure_embedded_redis(**_kwargs):
    from django.conf import settings

    if settings.EMBEDDED_REDIS:
        from ctihub import embedded_redis

        embedded_redis.ensure_running(settings.VAR_DIR)


worker_init.connect(_ensure_embedded_redis, weak=False)
beat_init.connect(_ensure_embedded_redis, weak=False)
