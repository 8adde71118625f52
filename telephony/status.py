"""Listener and account status: what the admin shows of each PBX account and socket.

Written by the socket supervisor (``telephony.sockets``) and by the providers without a socket (a
webhook, a snapshot, a backfill) when they learn an account is up or failing. No call's transaction
writes here; a socket's runner notes its last event (``touch_listener``) after each burst, at most once
a second a row.
"""

from __future__ import annotations

import threading
import time

from django.db import connection
from django.utils import timezone

from telephony.models import Listener, PbxAccount


def set_listener_state(listener_id: int, state: str, *, owner: str | None = None, error: str | None = None) -> None:
    Listener.objects.filter(pk=listener_id).update(**_state_fields(state, timezone.now(), owner, error))


def _state_fields(state: str, now, owner: str | None, error: str | None) -> dict:
    """What a listener's row says of a new state: one definition for one socket and for many at once."""
    fields: dict = {"state": state, "updated_at": now}
    if owner is not None:
        fields["owner"] = owner
    if error is not None:
        fields["last_error"] = error[:2000]
    if state == Listener.State.CONNECTED:
        fields["connected_since"] = now
    elif state in (Listener.State.BACKOFF, Listener.State.IDLE, Listener.State.STOPPED, Listener.State.FAILED):
        fields["connected_since"] = None
    return fields


def set_listeners_connected(connected: list[tuple[int, int, str]]) -> None:
    """What ``set_listener_state(CONNECTED, owner=owner, error="")`` and ``set_account_status(CONNECTED)`` write,
    for many (listener id, account id, owner) at once: one statement an owner, one an account."""
    now = timezone.now()
    for owner in sorted({owner for _, _, owner in connected}):
        Listener.objects.filter(pk__in=sorted({i for i, _, o in connected if o == owner})).update(
            **_state_fields(Listener.State.CONNECTED, now, owner, ""))
    for account_id in sorted({account_id for _, account_id, _ in connected}):
        set_account_status(account_id, PbxAccount.Status.CONNECTED)


def count_reconnect(listener_id: int) -> None:
    from django.db.models import F

    Listener.objects.filter(pk=listener_id).update(reconnects=F("reconnects") + 1)


# "Last event" is for people reading the admin: a second's precision is plenty, and writing the
# account's row on every burst of every socket would make all its listeners queue on one row lock.
# Each row is written at most once a second, and a write takes along every other row of the process
# that had an event since its own last write: with hundreds of sockets in a worker, one statement a
# table a second instead of one a socket (each an autocommit; 0.27 ms of a frame's CPU at 4 sockets).
TOUCH_EVERY_SECONDS = 1.0
_touch_lock = threading.Lock()
_touched: dict[tuple[str, int], float] = {}  # the row's last write (time.monotonic())
_touch_pending: set[tuple[str, int]] = set()  # rows with an event since their last write


def touch_listener(listener_id: int, account_id: int) -> None:
    keys = (("listener", listener_id), ("account", account_id))
    now = time.monotonic()
    with _touch_lock:
        _touch_pending.update(keys)
        if all(now - _touched.get(key, -TOUCH_EVERY_SECONDS) < TOUCH_EVERY_SECONDS for key in keys):
            return
        due = set(_touch_pending)
        _touch_pending.clear()
        _touched.update(dict.fromkeys(due, now))
    try:
        _write_last_event(due)
    except BaseException:
        with _touch_lock:  # the next event's touch writes them
            _touch_pending.update(due)
            for key in due:
                _touched.pop(key, None)
        raise


def _write_last_event(rows: set[tuple[str, int]]) -> None:
    # In SQL, as the frame path's other statements (the ORM compiled each for more than it cost to run).
    now = timezone.now()
    statements = []
    for kind, table in (("listener", _LISTENER_TABLE), ("account", _ACCOUNT_TABLE)):
        ids = sorted(pk for row_kind, pk in rows if row_kind == kind)
        if ids:
            statements.append((f"UPDATE {table} SET last_event_at = %s WHERE id IN ({', '.join(['%s'] * len(ids))})",
                               [now, *ids]))
    if len(statements) == 2 and connection.vendor == "postgresql":
        # One round trip, not two: the listeners' UPDATE as a data-modifying CTE of the accounts' (one autocommit).
        (listeners, listener_params), (accounts, account_params) = statements
        statements = [(f"WITH listeners AS ({listeners}) {accounts}", [*listener_params, *account_params])]
    with connection.cursor() as cursor:
        for sql, params in statements:
            cursor.execute(sql, params)


_LISTENER_TABLE = connection.ops.quote_name(Listener._meta.db_table)
_ACCOUNT_TABLE = connection.ops.quote_name(PbxAccount._meta.db_table)


def set_account_status(account_id: int, status: str, error: str | None = None) -> None:
    now = timezone.now()
    fields: dict = {"status": status}
    if error:
        fields.update(last_error=error[:2000], last_error_at=now)
    changed = PbxAccount.objects.filter(pk=account_id).exclude(status=status).update(status_since=now, **fields)
    if not changed and error:
        PbxAccount.objects.filter(pk=account_id).update(last_error=error[:2000], last_error_at=now)
