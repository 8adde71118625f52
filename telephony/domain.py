"""Domain functions of the telephony app: the only code that writes calls.

Every PBX event, from any provider, arrives here as a ``CallUpdate``.
``apply_call_update`` writes the call and its event in one transaction and, only
once that transaction has committed, publishes the card and queues the CRM sync
(so a browser or retailCRM never hears of a call the database does not have).
Views, tasks, consumers and socket listeners call these functions; none of them
writes models directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, connections, transaction
from django.utils import timezone

from ctihub.lib.brief_cache import BriefCache, copy_value
from ctihub.lib.phones import e164_or_empty
from telephony import plugins
from telephony import updates as u
from telephony.models import Call, CallEvent, PbxAccount, Terminal

logger = logging.getLogger(__name__)

# Istra recycles its (negative, small) call ids. A start frame for an id whose call
# ended longer ago than this is a new call; a younger one is a late or replayed frame.
CALL_ID_RECYCLE_AFTER = timedelta(minutes=5)
ACTIVE_STATES = (Call.State.RINGING, Call.State.DIALING, Call.State.TALKING, Call.State.HELD)


@dataclass(frozen=True)
class AppliedUpdate:
    call: Call
    changed: bool


# What the domain owns on a call row; the CRM side writes crm_sync_state and site_code itself.
CALL_FIELDS_WRITTEN = (
    "terminal", "agent", "direction", "is_internal", "state", "remote_number_e164", "remote_number_raw",
    "remote_label", "external_phone", "answered_at", "ended_at", "ringing_ms", "talking_ms", "end_cause",
    "allowed_actions", "state_token", "last_seq", "version", "updated_at", "pbx_state",
)

# Up to this many changed calls in a burst are saved one by one; more go in one bulk UPDATE.
BULK_UPDATE_FROM = 4


def apply_call_updates(updates: list[u.CallUpdate], received: float | None = None) -> list[AppliedUpdate]:
    """Apply a burst of updates (the frames one socket read together) in order, in one transaction.

    A burst costs a fixed handful of statements whatever its size (lock its calls, look up its
    terminals and already-stored frames, insert calls, insert events, update calls), which is what
    lets one worker keep up with a PBX at full tilt. After commit, each change publishes its card
    and the burst's calls are handed to the CRM side once each.

    ``received`` is ``time.monotonic()`` when the first frame of the burst came off the socket: the
    pop-up latency metric runs from there to the card's publish.
    """
    if not updates:
        return []
    received = time.monotonic() if received is None else received
    try:
        with transaction.atomic():
            return _apply_burst(updates, received)
    except IntegrityError:
        # Another worker inserted one of these calls (or frames) between our read and our insert.
        # One at a time, each update now finds and locks the other's row.
        return [_apply_alone(update, received) for update in updates]


# A frame that tells a live call as it is (no news: nothing written) is news all the same for the stale-call sweep
# (telephony.sweep), which reads a call's last news from updated_at: the call lives, as of the frame. Without it a
# call queued for a quarter of an hour or talking for four, that every Telepo snapshot still listed, looked silent
# and was swept. Noted at most this often a call: far below the sweep's shortest bound (15 min ringing), and the
# frame path writes nothing more for an unchanged call in between.
STILL_LIVE_EVERY = timedelta(minutes=5)


def apply_call_update(update: u.CallUpdate, received: float | None = None) -> AppliedUpdate:
    """Upsert the call, append its event, derive times; publish after commit."""
    return apply_call_updates([update], received)[0]


def _apply_alone(update: u.CallUpdate, received: float) -> AppliedUpdate:
    try:
        with transaction.atomic():
            return _apply_burst([update], received)[0]
    except IntegrityError:
        with transaction.atomic():  # the row that beat us is committed now: this read finds it
            return _apply_burst([update], received)[0]


def _apply_burst(updates: list[u.CallUpdate], received: float) -> list[AppliedUpdate]:
    with _burst_cursor() as cursor:
        return _apply_burst_on(cursor, updates, received)


def _apply_burst_on(cursor, updates: list[u.CallUpdate], received: float) -> list[AppliedUpdate]:
    calls, terminals = _lock_calls(cursor, updates)
    stored_frames = _stored_dedupe_keys(cursor, updates)
    applied: list[AppliedUpdate] = []
    new_calls: list[Call] = []
    events: list[_Event] = []
    changes: list[tuple[Call, Call]] = []  # (the call, a copy as it was at this change) in order
    still_live: list[Call] = []  # unchanged live calls whose last news moves to their frame's time
    for update in updates:
        key = (update.account_id, update.pbx_call_id)
        call = calls.get(key)
        # A frame already stored is a replay, however late its time: only a new frame may recycle the id.
        if call is not None and _dedupe_key(update, call) not in stored_frames and _is_recycled_id(call, update,
                                                                                                 terminals):
            # Keep the old call's history under a suffixed id; the new call takes the PBX id.
            call.pbx_call_id = f"{call.pbx_call_id}#{call.pk}"
            call.save(update_fields=["pbx_call_id"])
            call = None
        if call is None:
            if _dedupe_key(update, None) in stored_frames:
                # A replay of a frame stored under a call whose id the PBX has since recycled.
                stored = CallEvent.objects.select_related("call").get(dedupe_key=_dedupe_key(update, None))
                applied.append(AppliedUpdate(stored.call, False))
                continue
            recorded = plugins.recorded_elsewhere(update) if update.state == u.ENDED else None
            if recorded is not None:
                # A drop of a call we never saw, late enough that the call history's backfill stored the call
                # meanwhile (under the End User account): a second record would reach retailCRM twice. The
                # frame is kept as an event of that call, which also claims it for this one frame.
                logger.info("%s of call %s: already stored as call %s (from the call history)", update.kind,
                            update.pbx_call_id, recorded.pk, extra={"account_id": update.account_id,
                                                                    "call_id": recorded.pk})
                dedupe_key = _dedupe_key(update, None)
                stored_frames.add(dedupe_key)
                events.append(_Event(recorded, update.kind[:40], update.payload, update.occurred_at, dedupe_key))
                applied.append(AppliedUpdate(recorded, False))
                continue
            call = _new_call(update, terminals)
            calls[key] = call
            new_calls.append(call)
        else:
            if _dedupe_key(update, call) in stored_frames or _is_stale(call, update):
                applied.append(AppliedUpdate(call, False))  # a replayed frame, or an older one
                continue
            before = _comparable(call)
            _merge(call, update, terminals)
            if _comparable(call) == before:
                applied.append(AppliedUpdate(call, False))  # a no-news frame: idempotent
                alive_at = min(update.occurred_at, timezone.now())  # a PBX clock ahead of ours: not the future
                if call.state in ACTIVE_STATES and call.updated_at < alive_at - STILL_LIVE_EVERY:
                    call.updated_at = alive_at  # still alive as of the frame (never backwards)
                    still_live.append(call)
                continue
        dedupe_key = _dedupe_key(update, call)
        stored_frames.add(dedupe_key)
        events.append(_Event(call, update.kind[:40], update.payload, update.occurred_at, dedupe_key))
        call.version += 1
        changes.append((call, copy_value(call)))  # copy.copy, without its generic walk
        applied.append(AppliedUpdate(call, True))
    _write(cursor, new_calls, changes, events)
    for call in still_live:  # rare (at most every STILL_LIVE_EVERY a call): not worth the frame path's SQL
        Call.objects.filter(pk=call.pk, updated_at__lt=call.updated_at).update(updated_at=call.updated_at)
    if changes:
        kinds = {account_id: _account(account_id).kind for account_id in {c.account_id for c, _ in changes}}
        transaction.on_commit(lambda: _publish_and_sync(changes, received, kinds))
    return applied


try:  # psycopg 3 (Django's names, as its create_cursor uses them)
    from django.db.backends.postgresql.base import TIMESTAMPTZ_OID as _TIMESTAMPTZ_OID
    from django.db.backends.postgresql.base import ServerBindingCursor
    from django.db.backends.postgresql.psycopg_any import (
        register_tzloader as _register_tzloader,
    )
    from psycopg.pq import Format

    _TEXT = Format.TEXT

    class _ServerBindingCursor(ServerBindingCursor):
        """Django's server-binding cursor; its statements kept prepared when ``prepared`` (psycopg's ``prepare``)."""

        prepared: bool | None = None

        def execute(self, query, params=None, *, prepare=None, binary=None):
            return super().execute(query, params, prepare=self.prepared if prepare is None else prepare,
                                   binary=binary)

        def _send_query_prepared(self, name, pgq, *, binary=None):
            # psycopg notes the query it sends only when it is not prepared; Django's query log (DEBUG,
            # CaptureQueriesContext) reads that note, and showed None, or the statement before, for these.
            self._query = pgq
            return super()._send_query_prepared(name, pgq, binary=binary)
except (ImportError, ImproperlyConfigured):  # psycopg 2, or no PostgreSQL driver (SQLite, the embedded default)
    _ServerBindingCursor = None

# psycopg prepares a statement once its connection has run it ``prepare_threshold`` times; Django sets that to
# None, which also makes psycopg ignore a cursor's ``prepare=True``. A threshold no statement reaches leaves the
# ORM's statements as Django has them and lets the frame path's be prepared at their first run.
_ONLY_WHEN_ASKED = 2**31 - 1


def _burst_cursor():
    """One cursor for a burst's statements; on PostgreSQL (psycopg 3), one that binds its values on the server.

    Django's ``connection.cursor()`` made a new cursor for every statement (Django's wrapper, psycopg's
    cursor and its adapters: ~60 us each), and Django's default client-side binding quotes every value into
    the SQL text in Python. Both cost more than the statement. The cursor is still Django's (its error
    translation and, when queries are logged, its debug wrapper), built as ``connection.cursor()`` builds
    one, of Django's own server-binding class (that of its ``server_side_binding`` option, with psycopg's
    automatic prepared statements left off as Django leaves them). Only the frame path's own SQL runs on it.

    Its statements are prepared (``DATABASE_PREPARED_STATEMENTS``): PostgreSQL parsed and planned the lock and
    the write at every frame, as much CPU as running them; kept prepared for the connection's life (one
    statement per burst size and shape, psycopg's cache of 100 a connection), a frame cost the server about
    half (issue 16: 1.25-1.68 ms of PostgreSQL's CPU a frame, then 0.60-0.79). psycopg forgets them, and
    deallocates them on the server, after a rollback or DDL on the connection, as it does its own.
    """
    db = connections["default"]
    if _ServerBindingCursor is None or db.vendor != "postgresql":
        return db.cursor()
    db.close_if_health_check_failed()
    db.ensure_connection()
    with db.wrap_database_errors:
        prepared = settings.DATABASE_PREPARED_STATEMENTS
        if prepared and db.connection.prepare_threshold is None:
            db.connection.prepare_threshold = _ONLY_WHEN_ASKED
        cursor = _ServerBindingCursor(db.connection)
        cursor.prepared = prepared or None
        if db.timezone != db.connection.adapters.get_loader(_TIMESTAMPTZ_OID, _TEXT).timezone:
            _register_tzloader(db.timezone, cursor)  # as Django's create_cursor does
        return db._prepare_cursor(cursor)


# The hot path's reads are written in SQL: every frame makes them, and Django's compiling of the same
# two queries cost more CPU (0.5 ms of 0.8 for the lock, 0.5 of 0.6 for the terminals) than running them.
def _lock_calls(cursor, updates: list[u.CallUpdate]) -> tuple[dict[tuple[int, str], Call], dict]:
    """Lock the burst's calls and read its terminals, in one statement.

    The terminals: (account, terminal PBX id) -> (terminal id, agent id), for every terminal the burst names."""
    wanted: dict[int, set[str]] = {}
    for update in updates:
        wanted.setdefault(update.account_id, set()).add(update.pbx_call_id)
    where, params = _by_account(wanted, "pbx_call_id")
    # Locked in id order, so two workers with overlapping bursts queue instead of deadlocking.
    locking = f"SELECT {_CALL_COLUMNS} FROM {_CALL_TABLE} WHERE {where} ORDER BY id{_FOR_UPDATE}"
    terminals_wanted = _terminals_wanted(updates)
    if not terminals_wanted:
        cursor.execute(locking, params)
        rows = cursor.fetchall()
        calls = [_call_from_row(cursor.db, row) for row in rows]
        return {(call.account_id, call.pbx_call_id): call for call in calls}, {}
    # The terminals ride along (a round trip less a frame): the calls' rows, then the terminals', told apart
    # by the first column. Every row of the locking CTE is fetched, so every call is locked, in id order.
    terminals_where, terminals_params = _by_account(terminals_wanted, "pbx_id")
    cursor.execute(
        f"WITH locked AS ({locking}) SELECT 0, locked.*, NULL, NULL, NULL, NULL FROM locked"
        f" UNION ALL SELECT 1, {_CALL_NULLS}, account_id, pbx_id, id, agent_id FROM {_TERMINAL_TABLE}"
        f" WHERE {terminals_where}", [*params, *terminals_params])
    rows = cursor.fetchall()
    width = len(_CALL_ATTNAMES)
    calls = [_call_from_row(cursor.db, row[1:1 + width]) for row in rows if row[0] == 0]
    terminals = {(row[-4], row[-3]): (row[-2], row[-1]) for row in rows if row[0] == 1}
    return {(call.account_id, call.pbx_call_id): call for call in calls}, terminals


_call_converters: list | None = None


def _call_from_row(db, row: tuple) -> Call:
    """A Call as the ORM would build it from a row of ``_CALL_COLUMNS`` (its fields' converters, e.g. JSON)."""
    global _call_converters
    if _call_converters is None:
        found = []
        for index, field in enumerate(Call._meta.concrete_fields):
            column = field.get_col(Call._meta.db_table)
            converters = db.ops.get_db_converters(column) + column.get_db_converters(db)
            if converters:
                found.append((index, column, converters))
        _call_converters = found
    values = list(row)
    for index, column, converters in _call_converters:
        for converter in converters:
            values[index] = converter(values[index], column, db)
    call = Call.from_db(db.alias, _CALL_ATTNAMES, values)
    # As read under the lock: the UPDATE writes only what changed since (``_update_statement``).
    call._locked_values = _written_values(call)
    return call


def _written_values(call: Call) -> list:
    # A list value (a JSON field) is copied: the domain may change it in place.
    return [list(value) if isinstance(value := getattr(call, attname), list) else value
            for attname in _CALL_WRITTEN_ATTNAMES]


def _by_account(wanted: dict[int, set[str]], column: str) -> tuple[str, list]:
    """``(account_id = %s AND <column> IN (%s, ...)) OR ...`` for each account's set of ids.

    ``IN`` rather than PostgreSQL's ``= ANY(%s)``: the embedded default (SQLite) runs this path too."""
    where = " OR ".join(f"(account_id = %s AND {column} IN ({_placeholders(len(ids))}))" for ids in wanted.values())
    params: list = []
    for account_id, ids in wanted.items():
        params += [account_id, *sorted(ids)]
    return where, params


def _placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


# SQLite (the embedded default) has no row locks; it writes one transaction at a time anyway.
_FOR_UPDATE = " FOR UPDATE" if connection.features.has_select_for_update else ""


_CALL_TABLE = connection.ops.quote_name(Call._meta.db_table)
_CALL_ATTNAMES = [field.attname for field in Call._meta.concrete_fields]
_CALL_COLUMNS = ", ".join(connection.ops.quote_name(field.column) for field in Call._meta.concrete_fields)
_CALL_NULLS = ", ".join(["NULL"] * len(Call._meta.concrete_fields))
_TERMINAL_TABLE = connection.ops.quote_name(Terminal._meta.db_table)
_EVENT_TABLE = connection.ops.quote_name(CallEvent._meta.db_table)


def _terminals_wanted(updates: list[u.CallUpdate]) -> dict[int, set[str]]:
    wanted: dict[int, set[str]] = {}
    for update in updates:
        if update.terminal_pbx_id:
            wanted.setdefault(update.account_id, set()).add(update.terminal_pbx_id)
    return wanted


def _dedupe_key(update: u.CallUpdate, call: Call | None) -> str:
    # Without a PBX frame id, the frame's time and the call's version tell frames apart; the time
    # keeps a recycled call id's new frames clear of the old call's.
    frame_id = update.frame_id or f"{update.occurred_at.timestamp():.6f}v{call.version if call is not None else 0}"
    return f"{update.account_id}:{update.pbx_call_id}:{update.kind}:{frame_id}"[:255]


def _stored_dedupe_keys(cursor, updates: list[u.CallUpdate]) -> set[str]:
    """Frames of this burst that were stored before (a replay): only frames with a PBX id can be."""
    keys = [
        f"{update.account_id}:{update.pbx_call_id}:{update.kind}:{update.frame_id}"[:255]
        for update in updates if update.frame_id
    ]
    if not keys:
        return set()
    cursor.execute(f"SELECT dedupe_key FROM {_EVENT_TABLE} WHERE dedupe_key IN ({_placeholders(len(keys))})", keys)
    return {key for (key,) in cursor.fetchall()}


def _new_call(update: u.CallUpdate, terminals) -> Call:
    call = Call(account_id=update.account_id, pbx_call_id=update.pbx_call_id, state=update.state)
    call.created_at = update.started_at or update.occurred_at
    call.direction = update.direction or u.INBOUND
    _merge(call, update, terminals)
    return call


class _Event:
    """A ``CallEvent`` row to insert: the attributes its fields' ``pre_save`` read, without a model instance (whose
    ``__init__`` and foreign-key descriptor cost more than preparing the row). Nothing reads it afterwards."""

    __slots__ = ("call", "call_id", "kind", "payload", "received_at", "dedupe_key")

    def __init__(self, call: Call, kind: str, payload, received_at: datetime, dedupe_key: str):
        self.call, self.call_id, self.kind, self.payload = call, None, kind, payload
        self.received_at, self.dedupe_key = received_at, dedupe_key


def _write(cursor, new_calls: list[Call], changes: list[tuple[Call, Call]], events: list[_Event]) -> None:
    # On PostgreSQL a burst's new calls (a ringing frame's) are inserted in the events' statement, as a CTE whose
    # ids the events read: a round trip less on a third of the frames. SQLite keeps an INSERT of their own.
    joined = bool(new_calls and events and _WRITES_IN_CTES)
    if new_calls and not joined:
        _insert_calls(cursor, new_calls)  # an IntegrityError here means another worker was first
    new_ids = {id(call) for call in new_calls}
    updated = {id(call): call for call, _ in changes if id(call) not in new_ids}
    ctes: list[str] = []
    cte_params: list = []
    if joined:  # an IntegrityError of the statement then means the same
        sql, cte_params = _insert_calls_statement(cursor.db, new_calls)
        ctes.append(f"{_NEW_CALLS} AS ({sql}, account_id, pbx_call_id)")  # RETURNING id, and what finds it
    if len(updated) > BULK_UPDATE_FROM:
        now = timezone.now()
        for call in updated.values():
            call.updated_at = now
        Call.objects.bulk_update(list(updated.values()), CALL_FIELDS_WRITTEN)
    elif updated and events and _WRITES_IN_CTES:
        # The calls' UPDATEs ride in the events' INSERT as data-modifying CTEs: a round trip less a frame
        # (PostgreSQL runs each to completion whether or not the INSERT reads it).
        statements = [_update_statement(cursor.db, call) for call in updated.values()]
        ctes += [f"u{n} AS ({sql})" for n, (sql, _params) in enumerate(statements)]
        cte_params += [param for _sql, params in statements for param in params]
    else:
        for call in updated.values():  # a plain UPDATE each costs less than one CASE per field
            cursor.execute(*_update_statement(cursor.db, call))
    if events:
        _insert_events(cursor, events, ctes, cte_params, new_calls if joined else [])
    for call, snapshot in changes:
        snapshot.pk = call.pk


# The two writes of every frame, in SQL for the reason the reads are; each value goes through its
# field's own preparation (auto_now, JSON), as ``save(update_fields=...)`` and ``bulk_create`` do.
# No signal is lost: nothing listens to Call or CallEvent saves.
_CALL_WRITTEN = [Call._meta.get_field(name) for name in CALL_FIELDS_WRITTEN]
_CALL_WRITTEN_ATTNAMES = [field.attname for field in _CALL_WRITTEN]
_UPDATED_AT = CALL_FIELDS_WRITTEN.index("updated_at")  # auto_now: set by every update
_UPDATE_CALL: dict[tuple[int, ...], str] = {}  # by the indexes in _CALL_WRITTEN of the columns set
_EVENT_FIELDS = [field for field in CallEvent._meta.concrete_fields if not field.primary_key]
_INSERT_EVENTS = (f"INSERT INTO {_EVENT_TABLE} ("
                  + ", ".join(connection.ops.quote_name(field.column) for field in _EVENT_FIELDS) + ") VALUES ")


_CALL_INSERTED = [field for field in Call._meta.concrete_fields if not field.primary_key]
_INSERT_CALLS = (f"INSERT INTO {_CALL_TABLE} ("
                 + ", ".join(connection.ops.quote_name(field.column) for field in _CALL_INSERTED) + ") VALUES ")


def _insert_calls(cursor, calls: list[Call]) -> None:
    """``bulk_create`` as it does it on PostgreSQL: one INSERT, the ids read back in order."""
    cursor.execute(*_insert_calls_statement(cursor.db, calls))
    for call, (pk,) in zip(calls, cursor.fetchall()):
        _inserted(call, pk, cursor.db)


def _insert_calls_statement(db, calls: list[Call]) -> tuple[str, list]:
    row = "(" + ", ".join(["%s"] * len(_CALL_INSERTED)) + ")"
    params: list = []
    for call in calls:
        params += [field.get_db_prep_save(field.pre_save(call, True), db) for field in _CALL_INSERTED]
    return _INSERT_CALLS + ", ".join([row] * len(calls)) + " RETURNING id", params


def _inserted(call: Call, pk: int, db) -> None:
    call.pk = pk
    call._state.adding, call._state.db = False, db.alias


# PostgreSQL takes an UPDATE in a WITH (data-modifying CTEs); SQLite (the embedded default) does not.
_WRITES_IN_CTES = connection.vendor == "postgresql"


def _update_statement(db, call: Call) -> tuple[str, list]:
    """The call's row, locked and read in this transaction: only the columns that changed since are set.

    A frame changes 4-6 of the 20 (the state, its actions, the version, ``updated_at``...): preparing
    and sending the others was a fifth of the transaction's CPU."""
    locked = getattr(call, "_locked_values", None)
    now = _written_values(call)
    changed = [index for index, value in enumerate(now)
               if locked is None or index == _UPDATED_AT or value != locked[index]]
    statement = _UPDATE_CALL.get(tuple(changed))
    if statement is None:
        statement = _UPDATE_CALL[tuple(changed)] = (
            f"UPDATE {_CALL_TABLE} SET "
            + ", ".join(f"{connection.ops.quote_name(_CALL_WRITTEN[index].column)} = %s" for index in changed)
            + " WHERE id = %s")
    values = [_CALL_WRITTEN[index].get_db_prep_save(_CALL_WRITTEN[index].pre_save(call, False), db)
              for index in changed]
    call._locked_values = None  # written: another update of this instance writes every column
    return statement, [*values, call.pk]


def _insert_events(cursor, events: list[_Event], ctes: list[str] = (), cte_params: list = (),
                   new_calls: list[Call] = ()) -> None:
    """``new_calls``: the calls the ``_NEW_CALLS`` CTE of ``ctes`` inserts; their events take their ids from it,
    the events' INSERT is a CTE too, and the statement reads the new ids back (by account and PBX id)."""
    db = cursor.db
    new = {id(call) for call in new_calls}
    rows: list[str] = []
    params: list = list(cte_params)
    for event in events:
        if id(event.call) in new:
            rows.append(_NEW_CALL_EVENT_ROW)
            for field in _EVENT_FIELDS:
                if field is _EVENT_CALL:
                    params += [event.call.account_id, event.call.pbx_call_id]
                else:
                    params.append(field.get_db_prep_save(field.pre_save(event, True), db))
            continue
        event.call_id = event.call.pk  # a new call had no id when its event was made (bulk_create does this too)
        rows.append(_EVENT_ROW)
        params += [field.get_db_prep_save(field.pre_save(event, True), db) for field in _EVENT_FIELDS]
    insert = _INSERT_EVENTS + ", ".join(rows)
    if not new_calls:
        cursor.execute(("WITH " + ", ".join(ctes) + " " if ctes else "") + insert, params)
        return
    cursor.execute(f"WITH {', '.join(ctes)}, inserted_events AS ({insert})"
                   f" SELECT id, account_id, pbx_call_id FROM {_NEW_CALLS}", params)
    ids = {(account_id, pbx_call_id): pk for pk, account_id, pbx_call_id in cursor.fetchall()}
    for call in new_calls:
        _inserted(call, ids[(call.account_id, call.pbx_call_id)], db)


_NEW_CALLS = "new_calls"
_EVENT_CALL = CallEvent._meta.get_field("call")
_EVENT_ROW = "(" + ", ".join(["%s"] * len(_EVENT_FIELDS)) + ")"
_NEW_CALL_EVENT_ROW = "(" + ", ".join(
    f"(SELECT id FROM {_NEW_CALLS} WHERE account_id = %s AND pbx_call_id = %s)" if field is _EVENT_CALL else "%s"
    for field in _EVENT_FIELDS) + ")"


def _is_recycled_id(call: Call, update: u.CallUpdate, terminals: dict | None = None) -> bool:
    if call.state != Call.State.ENDED or update.state not in (u.RINGING, u.DIALING):
        return False
    if call.end_cause == u.END_SWEPT:
        # The sweep ended it because the PBX went silent on it: its real end is unknown, and a start
        # frame for its id is a new call, however soon (merged, the new call would be lost as "ended").
        return True
    named = (terminals or {}).get((update.account_id, update.terminal_pbx_id)) if update.terminal_pbx_id else None
    if named is not None and call.terminal_id is not None and named[0] != call.terminal_id:
        # Another terminal's leg setting up under the ended call's id: a blind transfer's target (Telepo keeps
        # the call_id and reports the new user's states under it), or another phone of a forked call that
        # answers after the first dropped. Merged, it was dropped ("nothing revives an ended call"): the agent
        # the call went to got no card and no pop-up, and an answered leg was recorded as missed.
        return True
    return call.ended_at is not None and update.occurred_at - call.ended_at > CALL_ID_RECYCLE_AFTER


def _is_stale(call: Call, update: u.CallUpdate) -> bool:
    if update.seq is not None and call.last_seq is not None and update.seq <= call.last_seq:
        return True  # Telepo delivered an older message after a newer one
    if call.state == Call.State.ENDED and update.state != u.ENDED:
        return True  # nothing revives an ended call (a late EARLY after TERMINATED)
    if call.end_cause == u.END_SWEPT:
        # A late drop of a swept call would rewrite an end retailCRM already has (its hangup and upload
        # went with the sweep): the swept call stays as the sweep left it, and the admin sees it swept.
        return True
    return False


def _comparable(call: Call) -> tuple:
    return (
        call.state, call.direction, call.is_internal, call.remote_number_e164, call.remote_number_raw,
        call.remote_label, call.external_phone, tuple(call.allowed_actions or ()), call.state_token,
        call.answered_at, call.ended_at, call.ringing_ms, call.talking_ms, call.end_cause,
        call.terminal_id, call.agent_id, call.last_seq,
        # A snapshot in a state we do not know changes only this: it is news (stored, and the card shows it).
        call.pbx_state,
    )


def _merge(call: Call, update: u.CallUpdate, terminals: dict) -> None:
    """Fold what the update says into the call; fields it does not mention stay."""
    account = _account(update.account_id)
    if update.direction:
        call.direction = update.direction
    if update.is_internal is not None:
        call.is_internal = update.is_internal
    if update.remote_number is not None:
        call.remote_number_raw = update.remote_number
        call.remote_number_e164 = update.remote_number_e164 or e164_or_empty(
            update.remote_number, account.default_region or None
        )
    elif update.remote_number_e164:
        call.remote_number_e164 = update.remote_number_e164
    if update.remote_label is not None:
        call.remote_label = update.remote_label
    if update.external_phone is not None:
        call.external_phone = e164_or_empty(update.external_phone, account.default_region or None) or update.external_phone
    if update.allowed_actions is not None:
        call.allowed_actions = list(update.allowed_actions)
    if update.state_token is not None:
        call.state_token = update.state_token
    if update.seq is not None:
        call.last_seq = update.seq
    # Every update says a state: one we know clears what an unknown one left.
    call.pbx_state = update.pbx_state or ""
    _assign_terminal_and_agent(call, update, terminals)
    _move_to_state(call, update)


def _move_to_state(call: Call, update: u.CallUpdate) -> None:
    if call.state == Call.State.ENDED and update.state != u.ENDED:
        return
    was_ended = call.state == Call.State.ENDED
    call.state = update.state
    if update.state in (u.TALKING, u.HELD) and call.answered_at is None:
        call.answered_at = update.answered_at or update.occurred_at
    if update.state == u.ENDED:
        answered_late = False
        if call.answered_at is None and update.answered_at is not None:
            # The PBX says it was answered although we never saw it talking (myRCC coalesces snapshots,
            # a Telepo CONFIRMED got lost or came after the end): without this, an answered call would
            # count as missed.
            call.answered_at = update.answered_at
            answered_late = was_ended
        call.ended_at = call.ended_at or update.occurred_at
        if answered_late and call.answered_at > call.ended_at:
            call.answered_at = call.ended_at  # the end we had came first (a snapshot's): answered by then
        call.allowed_actions = []
        if update.end_cause:
            call.end_cause = update.end_cause
        elif answered_late and call.end_cause == u.END_NO_ANSWER:
            call.end_cause = u.END_HANGUP  # "missed" was only ever the lack of an answer
        elif not call.end_cause:
            call.end_cause = u.END_HANGUP if call.answered_at else u.END_NO_ANSWER
        if answered_late:
            # Ringing and talking were derived as never answered: derive them again.
            call.ringing_ms = call.talking_ms = None
        _derive_durations(call, update)


def _derive_durations(call: Call, update: u.CallUpdate) -> None:
    if update.ringing_ms is not None:
        call.ringing_ms = update.ringing_ms
    elif call.ringing_ms is None:
        ring_end = call.answered_at or call.ended_at
        call.ringing_ms = _ms_between(call.created_at, ring_end)
    if update.talking_ms is not None:
        call.talking_ms = update.talking_ms
    elif call.talking_ms is None:
        call.talking_ms = _ms_between(call.answered_at, call.ended_at) if call.answered_at else 0


def _ms_between(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, int((end - start).total_seconds() * 1000))


def _assign_terminal_and_agent(call: Call, update: u.CallUpdate, terminals: dict) -> None:
    if update.terminal_pbx_id:
        terminal = terminals.get((update.account_id, update.terminal_pbx_id))
        if terminal is not None:
            call.terminal_id, agent_id = terminal
            if agent_id:
                call.agent_id = agent_id
    if call.agent_id is None and update.local_party:
        from telephony.parties import agent_for_local_party

        agent = agent_for_local_party(update.account_id, update.local_party)
        if agent is not None:
            call.agent_id = agent.id


def _publish_and_sync(changes: list[tuple[Call, Call]], received: float, kinds: dict[int, str]) -> None:
    from ctihub.lib import metrics
    from telephony.plugins import calls_committed
    from telephony.publish import publish_cards, publisher

    # The cards and the CRM hand-off (its tasks) leave together: one wake-up of the publisher's thread and
    # one pipeline to Redis. The hand-off's work here is in memory but for an answered call's "start events
    # settled" (one short query), which is all the cards may wait for.
    with publisher.together():
        published = publish_cards([snapshot for _call, snapshot in changes])
        # Pop-up latency: from the frame coming off the socket to its card leaving for the browsers; the
        # events-applied counter rides on the same round trip to Redis, off this thread.
        applied_kinds = [kinds.get(snapshot.account_id, "") for _call, snapshot in changes]
        published.add_done_callback(
            lambda _done: metrics.popup_latency_later(time.monotonic() - received, len(changes), applied_kinds))
        latest = {call.pk: call for call, _snapshot in changes}  # each call once, as it is now
        calls_committed.send(Call, calls=list(latest.values()))  # the CRM hand-off (telephony.plugins)


_accounts = BriefCache("telephony-account", watch=(PbxAccount,))


class _AccountBrief(NamedTuple):
    """What the frame path reads of an account. A tuple, so the cache hands out the one it keeps: a copy of
    the model instance (its state, its fields cache) at every read, twice a frame, was ~0.1 ms of its CPU."""

    kind: str
    default_region: str


def _account(account_id: int) -> _AccountBrief:
    """Accounts change rarely; a few seconds of caching keeps the hot path to one query (an edit saved in
    this process counts at once)."""
    return _accounts.get(account_id, lambda: _brief(PbxAccount.objects.get(pk=account_id)))


def _brief(account: PbxAccount) -> _AccountBrief:
    return _AccountBrief(kind=account.kind, default_region=account.default_region)
