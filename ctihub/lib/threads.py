"""How the processes with many busy threads (daphne, the Celery worker) share the GIL."""

from __future__ import annotations

import sys


def use_configured_switch_interval() -> None:
    """``GIL_SWITCH_INTERVAL_US`` instead of Python's 5 ms: a card's path crosses several threads (see
    docs/performance.md), and at 5 ms each hop could wait a whole interval behind a busy thread."""
    from django.conf import settings

    sys.setswitchinterval(settings.GIL_SWITCH_INTERVAL_US / 1e6)
