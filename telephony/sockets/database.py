"""The database threads of the sockets: every socket thread hands its bursts to at most
``LISTENER_DB_CONNECTIONS`` threads, each keeping its connection while work keeps coming."""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import Future

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

#: A database thread of the listeners closes its connection after this long without work.
DB_IDLE_SECONDS = 1.0


class DbWorkers:
    """The database work of every socket of this process, done by at most ``size`` threads.

    A worker holds thousands of sockets, one thread each, and PostgreSQL cannot give every one a
    connection (max_connections is 100 by default). So socket threads never touch the database:
    they hand each burst to this pool and wait for it (which keeps a socket's frames in order),
    and each pool thread keeps its one connection while work keeps coming. A slot a socket
    thread held until it had been quiet for a second starved the others at a frame a second per
    socket (a terminal's ordinary pace): pop-ups waited seconds for a slot.

    Work goes to the thread that went idle last. Handed round all ``size`` threads in turn (one
    shared queue), a frame every tenth of a second reached each thread every two seconds, after it
    had closed its connection for a quiet second: most frames paid a new PostgreSQL connection.
    Last-idle-first keeps as few threads (and connections) busy as the load needs; the others
    close theirs after ``DB_IDLE_SECONDS``.
    """

    def __init__(self, size: int):
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []  # a stack: the thread idle the shortest time on top
        self._backlog: deque = deque()  # work that found every thread busy, oldest first
        self._threads = [
            threading.Thread(target=self._work, name=f"listener-db-{n}", daemon=True) for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, operation):
        """``operation()`` on a pool thread; its result, or its exception raised here."""
        future: Future = Future()
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                self._backlog.append((operation, future))
        if inbox is not None:
            inbox.put((operation, future))
        return future.result()

    def _work(self) -> None:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        while True:
            with self._lock:
                item = self._backlog.popleft() if self._backlog else None
                if item is None:
                    self._idle.append(inbox)
            if item is None:
                try:
                    item = inbox.get(timeout=DB_IDLE_SECONDS)
                except queue.Empty:
                    connection.close()  # a quiet second: PostgreSQL gets the connection back
                    item = inbox.get()  # still on the idle stack, below the busier threads
            operation, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = operation()
            except BaseException as exc:  # handed to the waiting socket thread, whatever it is
                if isinstance(exc, (OperationalError, InterfaceError)):
                    connection.close()  # the next operation reconnects
                future.set_exception(exc)
            else:
                future.set_result(result)


_db_workers: DbWorkers | None = None
_db_workers_lock = threading.Lock()
_db_workers_pid: int | None = None


def db_workers() -> DbWorkers:
    global _db_workers, _db_workers_pid
    with _db_workers_lock:
        if _db_workers is None or _db_workers_pid != os.getpid():  # a forked child has no threads
            _db_workers, _db_workers_pid = DbWorkers(settings.LISTENER_DB_CONNECTIONS), os.getpid()
        return _db_workers


class _Entry:
    __slots__ = ("item", "event", "lead", "error", "result")

    def __init__(self, item):
        self.item, self.event, self.lead, self.error, self.result = item, threading.Event(), False, None, None


class GroupCommit:
    """Writes that many socket threads make at once, done in one statement for all that are waiting.

    ``add(item)`` returns once ``write([items])`` (on the database threads) wrote this item, or raises what it
    raised. ``write`` may instead answer a list, an outcome per item: ``add`` returns the item's, or raises it
    if it is an exception (one item's failure need not be its batch's). The first caller writes; those that
    come while it writes wait, and the first of them then writes all of theirs in one go: no delay added when
    alone, one statement for a whole crowd. A worker joining
    takes hundreds of listeners over, each noting its socket connected (issue 19): one UPDATE each, compiled
    by the ORM and sent on its own, was a fifth of the taker's CPU a move.
    """

    def __init__(self, write):
        self._write = write
        self._lock = threading.Lock()
        self._pending: list[_Entry] = []
        self._writing = False

    def add(self, item):
        entry = _Entry(item)
        with self._lock:
            self._pending.append(entry)
            lead = not self._writing
            self._writing = True
        if not lead:
            entry.event.wait()
            if not entry.lead:  # written by the batch of the one that wrote while we came
                if entry.error is not None:
                    raise entry.error
                return entry.result
        with self._lock:
            batch, self._pending = self._pending, []
        error, outcomes = None, None
        try:
            outcomes = db_workers().run(lambda: self._write([e.item for e in batch]))
        except BaseException as exc:  # every waiter of the batch gets it, and retries as it would have alone
            error = exc
        with self._lock:
            for n, waiting in enumerate(batch):
                waiting.lead, waiting.error = False, error
                if isinstance(outcomes, list):
                    if isinstance(outcomes[n], BaseException):
                        waiting.error = outcomes[n]
                    else:
                        waiting.result = outcomes[n]
                waiting.event.set()
            if self._pending:  # came while we wrote: the first of them writes them all
                self._pending[0].lead = True
                self._pending[0].event.set()
            else:
                self._writing = False
        if entry.error is not None:
            raise entry.error
        return entry.result
