"""Worker bootsteps: the socket supervisor lives and dies with the worker process."""

import os

from celery import bootsteps


class ListenerSupervisorStep(bootsteps.StartStopStep):
    """Starts ``telephony.supervisor.Supervisor`` when the worker starts, stops it cleanly at shutdown."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.supervisor = None

    def start(self, worker):
        from django.conf import settings

        if not settings.LISTENER_SUPERVISOR:
            return
        from telephony.supervisor import Supervisor

        self.supervisor = Supervisor(owner=f"{worker.hostname}:{os.getpid()}")
        self.supervisor.start()

    def stop(self, worker):
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
