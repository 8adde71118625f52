"""What a PBX sent that the specs did not lead us to expect: said once per account and value.

The specs leave values open (a call-line state, an event name) and a real PBX will
send ones our reading did not foresee. Each is dealt with where it is read (kept as
given, or the one item skipped while the rest of the frame applies) and logged
here, once per account and value: a PBX that repeats it in every snapshot, 10 times
a second, must not flood the log, and must not hide the first occurrence either.

The memory is per process and bounded: past ``MAX_NOTED`` the oldest notes are
forgotten, so at worst a value is said again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

MAX_NOTED = 10_000
KEY_CHARS = 120  # a value is remembered by its start: a 5 MB "state" must not be kept whole

_noted: OrderedDict[tuple, None] = OrderedDict()
_lock = threading.Lock()


def first_time(account_id, what: str, value) -> bool:
    """True the first time this account sends ``value`` for ``what`` (as far as this process remembers)."""
    key = (account_id, what, str(value)[:KEY_CHARS])
    with _lock:
        if key in _noted:
            _noted.move_to_end(key)
            return False
        _noted[key] = None
        if len(_noted) > MAX_NOTED:
            _noted.popitem(last=False)
        return True


def warn_once(logger: logging.Logger, account_id, what: str, value, message: str, *args) -> bool:
    """Log ``message % args`` as a warning with the account, unless this account said ``value`` before."""
    if not first_time(account_id, what, value):
        return False
    logger.warning(message, *args, extra={"account_id": account_id})
    return True


def shown(value, limit: int = 60) -> str:
    """A PBX value for a log line: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def forget() -> None:
    """Forget every note (tests)."""
    with _lock:
        _noted.clear()
