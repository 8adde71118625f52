"""Queueing a Celery task without failing the caller."""

import logging

logger = logging.getLogger(__name__)


def enqueue(task, *args, countdown: float | None = None) -> bool:
    """Queue a task; a broker hiccup must not fail the caller: a periodic task (sweep, reconcile,
    backfill) finds from the database whatever was not queued."""
    try:
        task.apply_async(args=args, countdown=countdown)
        return True
    except Exception:
        logger.exception("could not queue %s%r; the periodic task will pick it up", task.name, args)
        return False
