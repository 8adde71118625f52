import logging

from celery import shared_task

from telephony.models import Call

logger = logging.getLogger(__name__)


@shared_task
def ping_task() -> dict:
    """Liveness probe for workers: proves a task crossed Redis and reached the database."""
    return {"pong": True, "calls": Call.objects.count()}


def enqueue(task, *args, countdown: float | None = None) -> bool:
    """Queue a task; a broker hiccup must not fail the caller: a periodic task (sweep, reconcile,
    backfill) finds from the database whatever was not queued."""
    try:
        task.apply_async(args=args, countdown=countdown)
        return True
    except Exception:
        logger.exception("could not queue %s%r; the periodic task will pick it up", task.name, args)
        return False
