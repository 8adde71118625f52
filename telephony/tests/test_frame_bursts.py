"""Frame bursts of many sockets stored together (``telephony.sockets.runner.frame_bursts``).

At a few hundred frames a second each socket's burst was a single frame in a transaction of its own on a
database thread of its own; when the rate stepped up a dozen threads opened connections at once (issue 16).
Bursts waiting at the same time now go in one transaction; one burst's failure stays its own.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from telephony import domain, status
from telephony import updates as u
from telephony.models import Call, CallEvent, Listener
from telephony.sockets import database, runner
from telephony.sockets.database import GroupCommit
from tests.factories import make_account, make_agent, make_terminal

T0 = timezone.now().replace(microsecond=0)


class InlineDb:
    def run(self, operation):
        return operation()


def ringing(account, call_id: str, terminal: str) -> u.CallUpdate:
    return u.CallUpdate(account_id=account.pk, state=u.RINGING, kind="callRinging", payload={"event": "callRinging"},
                        occurred_at=T0 + timedelta(seconds=1), pbx_call_id=call_id, terminal_pbx_id=terminal,
                        direction=u.INBOUND, remote_number="0612345678")


def make_sockets(count: int) -> list[tuple]:
    """``count`` accounts, a listener and a terminal (``t<n>``) each: a socket's worth each."""
    found = []
    for n in range(count):
        account = make_account(default_region="FR")
        make_terminal(account, pbx_id=f"t{n}", agent=make_agent())
        found.append((account, Listener.objects.create(account=account, name=f"l{n}")))
    return found


@pytest.fixture
def sockets(db, published):
    return make_sockets(2)


def test_it_returns_each_items_own_outcome_when_the_write_answers_one_per_item(monkeypatch):
    monkeypatch.setattr(database, "db_workers", InlineDb)
    commit = GroupCommit(lambda items: [ValueError(f"bad {item}") if item == "bad" else f"ok {item}" for item in items])
    assert commit.add("a") == "ok a"
    with pytest.raises(ValueError, match="bad bad"):
        commit.add("bad")
    assert not commit._writing


@pytest.mark.django_db
def test_it_stores_the_bursts_of_two_sockets_in_one_transaction(sockets, monkeypatch):
    (first, first_listener), (second, second_listener) = sockets
    applied = []
    real = domain.apply_call_updates
    monkeypatch.setattr(domain, "apply_call_updates", lambda updates, received=None: applied.append(len(updates))
                        or real(updates, received=received))
    outcomes = runner._store_bursts([
        ([ringing(first, "-1", "t0")], time.monotonic(), first_listener.pk, first.pk),
        ([ringing(second, "-2", "t1"), ringing(second, "-3", "t1")], time.monotonic(), second_listener.pk, second.pk),
    ])
    assert outcomes == [None, None]
    assert applied == [3]  # one transaction for the three frames of both sockets
    assert sorted(Call.objects.values_list("pbx_call_id", flat=True)) == ["-1", "-2", "-3"]
    assert Listener.objects.filter(last_event_at__isnull=False).count() == 2  # each socket's "last event" noted


@pytest.mark.django_db
def test_it_stores_the_other_bursts_when_one_cannot_be_stored(sockets, monkeypatch):
    (first, first_listener), (second, second_listener) = sockets
    real = domain.apply_call_updates

    def refusing_call_minus_one(updates, received=None):
        if any(update.pbx_call_id == "-1" for update in updates):
            raise ValueError("a frame this build cannot store")
        return real(updates, received=received)

    monkeypatch.setattr(domain, "apply_call_updates", refusing_call_minus_one)
    outcomes = runner._store_bursts([
        ([ringing(first, "-1", "t0")], time.monotonic(), first_listener.pk, first.pk),
        ([ringing(second, "-2", "t1")], time.monotonic(), second_listener.pk, second.pk),
    ])
    assert isinstance(outcomes[0], ValueError) and outcomes[1] is None
    assert list(Call.objects.values_list("pbx_call_id", flat=True)) == ["-2"]
    assert CallEvent.objects.count() == 1


@pytest.mark.django_db
def test_it_raises_a_database_outage_to_every_burst_and_notes_a_failed_touch_apart(sockets, monkeypatch):
    (first, first_listener), (second, second_listener) = sockets
    bursts = [([ringing(first, "-1", "t0")], time.monotonic(), first_listener.pk, first.pk),
              ([ringing(second, "-2", "t1")], time.monotonic(), second_listener.pk, second.pk)]
    with monkeypatch.context() as patched:
        patched.setattr(domain, "apply_call_updates", lambda *a, **k: (_ for _ in ()).throw(OperationalError("gone")))
        with pytest.raises(OperationalError):  # the whole batch: each runner waits the outage out and comes again
            runner._store_bursts(bursts)
    assert not Call.objects.exists()

    def touch(listener_id, account_id):
        if listener_id == second_listener.pk:
            raise OperationalError("gone while noting")

    monkeypatch.setattr(status, "touch_listener", touch)
    monkeypatch.setattr(runner.connection, "close", lambda: None)  # the test's transaction holds the connection
    assert runner._store_bursts(bursts) == [None, runner.TOUCH_FAILED]  # stored; only the note is retried
    assert Call.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_it_stores_the_bursts_that_come_while_one_is_written_in_the_next_transaction(published, monkeypatch):
    # The real group commit, database threads and PostgreSQL: sockets' runners hand their bursts over from
    # threads of their own, as in a worker. The first transaction is held until three more bursts wait.
    accounts = make_sockets(4)
    real, transactions, release = domain.apply_call_updates, [], threading.Event()

    def held_first(updates, received=None):
        transactions.append(sorted(update.pbx_call_id for update in updates))
        if len(transactions) == 1:
            release.wait(5)
        return real(updates, received=received)

    monkeypatch.setattr(domain, "apply_call_updates", held_first)
    monkeypatch.setattr(runner, "_frame_bursts", None)  # this test's own group commit

    def hand_over(n):
        account, listener = accounts[n]
        runner.frame_bursts().add(([ringing(account, f"-{n}", f"t{n}")], time.monotonic(), listener.pk, account.pk))

    threads = [threading.Thread(target=hand_over, args=(n,)) for n in range(4)]
    threads[0].start()
    deadline = time.monotonic() + 5
    while not transactions:
        assert time.monotonic() < deadline, "the first burst was never written"
        time.sleep(0.005)
    for thread in threads[1:]:
        thread.start()
    while len(runner.frame_bursts()._pending) < 3:
        assert time.monotonic() < deadline, "the other bursts never came"
        time.sleep(0.005)
    release.set()
    for thread in threads:
        thread.join(10)
    assert transactions == [["-0"], ["-1", "-2", "-3"]]
    assert sorted(Call.objects.values_list("pbx_call_id", flat=True)) == ["-0", "-1", "-2", "-3"]
    assert Listener.objects.filter(last_event_at__isnull=False).count() == 4
