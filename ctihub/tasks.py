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


def enqueue_soon(task, *args) -> bool:
    """Queue a task from the event path without holding up the calling thread.

    Its message is pushed by the publisher's thread (``telephony.publish``), with whatever else queued
    meanwhile, in one round trip to Redis, instead of one ``apply_async`` each (a third of the socket
    worker's CPU for a frame went there). A task whose message needs more than a push
    (``ctihub.lib.broker.direct_queue``) is queued here and now, as ``enqueue`` does. Either way a broker
    failure is logged and left to the periodic task that backs the work.
    """
    from ctihub.lib import broker

    if broker.direct_queue(task) is None:
        return enqueue(task, *args)
    from telephony.publish import publisher

    publisher.queue_tasks([(task, args)])
    return True
