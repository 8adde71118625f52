"""Celery tasks of the myCrm provider: none.

A call whose end a socket missed is ended from the call history of the End User account with the same
login (``istra_enduser.tasks.reconcile_after_reconnect_task``, queued by ``transport.py`` on each
reconnect), or by the stale-call sweep.
"""
