from celery import shared_task

from telephony.models import Call


@shared_task
def ping_task() -> dict:
    """Liveness probe for workers: proves a task crossed Redis and reached the database."""
    return {"pong": True, "calls": Call.objects.count()}
