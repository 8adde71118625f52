"""The listeners' group commit (``telephony.sockets.database.GroupCommit``) and what it writes for sockets that
connected (``telephony.status.set_listeners_connected``)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import OperationalError

from telephony import status
from telephony.models import Listener, PbxAccount
from telephony.sockets.database import GroupCommit
from tests.factories import make_account


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_it_writes_what_came_while_it_wrote_in_one_go(inline_db):
    writes, release = [], threading.Event()

    def write(items):
        writes.append(sorted(items))
        if len(writes) == 1:
            release.wait(5)  # the first write is slow: the others come meanwhile

    commit = GroupCommit(write)
    threads = [threading.Thread(target=commit.add, args=(0,))]
    threads[0].start()
    wait_until(lambda: writes)
    threads += [threading.Thread(target=commit.add, args=(n,)) for n in range(1, 6)]
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: len(commit._pending) == 5)
    release.set()
    for thread in threads:
        thread.join(5)
    assert writes == [[0], [1, 2, 3, 4, 5]]
    commit.add(6)  # alone: written at once
    assert writes[-1] == [6]


def test_it_returns_each_items_own_outcome_when_the_write_answers_one_per_item(inline_db):
    commit = GroupCommit(lambda items: [ValueError(f"bad {item}") if item == "bad" else f"ok {item}" for item in items])
    assert commit.add("a") == "ok a"
    with pytest.raises(ValueError, match="bad bad"):
        commit.add("bad")
    assert not commit._writing


def test_it_raises_a_failed_write_in_every_caller_of_its_batch(inline_db):
    release, calls = threading.Event(), []

    def write(items):
        calls.append(sorted(items))
        if len(calls) == 1:
            release.wait(5)
            return
        raise OperationalError("the database went away")

    commit = GroupCommit(write)
    errors = []

    def add(item):
        try:
            commit.add(item)
        except OperationalError as exc:
            errors.append((item, str(exc)))

    first = threading.Thread(target=add, args=(0,))
    first.start()
    wait_until(lambda: calls)
    others = [threading.Thread(target=add, args=(n,)) for n in (1, 2)]
    for thread in others:
        thread.start()
    wait_until(lambda: len(commit._pending) == 2)
    release.set()
    for thread in [first, *others]:
        thread.join(5)
    assert sorted(errors) == [(1, "the database went away"), (2, "the database went away")]
    assert not commit._writing  # and the next one writes again
    with pytest.raises(OperationalError):
        commit.add(3)


@pytest.mark.django_db
def test_it_notes_many_listeners_connected_as_one_each_would():
    account = make_account(status=PbxAccount.Status.DEGRADED)
    listeners = [Listener.objects.create(account=account, name=f"l{n}", state=Listener.State.BACKOFF,
                                         last_error="down") for n in range(3)]
    status.set_listeners_connected([(listener.pk, account.pk, "worker-a") for listener in listeners[:2]])
    for listener in listeners:
        listener.refresh_from_db()
    assert [(listener.state, listener.owner, listener.last_error, listener.connected_since is not None)
            for listener in listeners] == [("connected", "worker-a", "", True)] * 2 + [("backoff", "", "down", False)]
    account.refresh_from_db()
    assert account.status == PbxAccount.Status.CONNECTED
