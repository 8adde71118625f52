"""Worker bootsteps: the socket supervisor lives and dies with the worker process."""

import os

from celery import bootsteps


class ListenerSupervisorStep(bootsteps.StartStopStep):
    """Starts ``telephony.sockets.supervisor.Supervisor`` when the worker starts, stops it cleanly at shutdown.

    At a warm shutdown the supervisor first hands its listeners over to the other live workers (at most
    ``LISTENER_HANDOVER_SECONDS``), so a deploy restarting workers one by one loses no frame.
    """

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.supervisor = None

    def start(self, worker):
        from django.conf import settings

        if not settings.LISTENER_SUPERVISOR or not consumes_default_queue(worker):
            return
        from telephony.sockets.supervisor import Supervisor

        self.supervisor = Supervisor(owner=f"{worker.hostname}:{os.getpid()}")
        self.supervisor.start()

    def stop(self, worker):
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None


def consumes_default_queue(worker) -> bool:
    """False for a worker started for other queues only (``-Q call-events``: the retailCRM events worker).

    Such a worker keeps its threads for its queue and holds no PBX sockets; the workers that consume the
    default queue (every one started without ``-Q``) hold them.
    """
    from django.conf import settings

    selected = worker.app.amqp.queues.consume_from
    return not selected or settings.CELERY_TASK_DEFAULT_QUEUE in selected
