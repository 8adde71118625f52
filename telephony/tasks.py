"""Celery tasks of the telephony app itself: small, a call into the domain's helpers.

Found by ``app.autodiscover_tasks()`` (``telephony`` is an installed app); the beat
schedule in ``ctihub/settings.py`` runs ``sweep_stale_calls_task``.
"""

from __future__ import annotations

from celery import shared_task


@shared_task(ignore_result=True)
def sweep_stale_calls_task() -> int:
    """Beat: end the calls the PBX has said nothing about for too long (``telephony.sweep``)."""
    from telephony.sweep import sweep_stale_calls

    return len(sweep_stale_calls())
