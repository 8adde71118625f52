"""Frame bursts of many sockets stored together (``telephony.sockets.runner.frame_bursts``).

At a few hundred frames a second each socket's burst was a single frame in a transaction of its own on a
database thread of its own; when the rate stepped up a dozen threads opened connections at once (issue 16).
Bursts waiting at the same time now go in one transaction; one burst's failure stays its own.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import OperationalError, connection, connections
from django.db.backends.signals import connection_created
from django.utils import timezone

from telephony import domain
from telephony import updates as u
from telephony.models import Call, CallEvent, Listener
from telephony.providers.base import ListenerSpec
from telephony.sockets import runner
from tests.factories import make_account, make_agent, make_terminal

T0 = timezone.now().replace(microsecond=0)


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
def test_it_raises_a_database_outage_to_every_burst(sockets, monkeypatch):
    (first, first_listener), (second, second_listener) = sockets
    bursts = [([ringing(first, "-1", "t0")], time.monotonic(), first_listener.pk, first.pk),
              ([ringing(second, "-2", "t1")], time.monotonic(), second_listener.pk, second.pk)]
    with monkeypatch.context() as patched:
        patched.setattr(domain, "apply_call_updates", lambda *a, **k: (_ for _ in ()).throw(OperationalError("gone")))
        with pytest.raises(OperationalError):  # the whole batch: each runner waits the outage out and comes again
            runner._store_bursts(bursts)
    assert not Call.objects.exists()



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


class _RowLock:
    """Another session holding a listener's row (``SELECT ... FOR UPDATE``) until released."""

    def __init__(self, listener: Listener):
        self.session = connections.create_connection("default")
        self.session.set_autocommit(False)
        with self.session.cursor() as cursor:
            cursor.execute(f"SELECT id FROM {Listener._meta.db_table} WHERE id = %s FOR UPDATE", [listener.pk])

    def release(self) -> None:
        if self.session is not None:
            self.session.rollback()
            self.session.close()
            self.session = None


@pytest.mark.django_db(transaction=True)
def test_it_notes_a_bursts_last_event_alone_again_when_only_the_note_failed(published, inline_db, monkeypatch):
    # PostgreSQL itself refuses the "last event" note after the burst was stored: the listener's row is locked by
    # another session and this one gives up after lock_timeout. The runner must retry the note alone: the burst
    # applied twice would be a second event of the call.
    [(account, listener)] = make_sockets(1)
    monkeypatch.setattr(runner, "_frame_bursts", None)  # this test's own group commit

    def impatient(sender, connection, **kwargs):  # every connection of this test, the ones opened after a failure too
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")

    connection_created.connect(impatient, dispatch_uid="test-impatient")
    connection.close()
    lock = _RowLock(listener)
    try:
        retries = []

        class ReleaseOnRetry:  # the runner's wait between tries: the other session lets go meanwhile
            def wait(self, seconds):
                retries.append(seconds)
                lock.release()
                return False

        socket = runner.ListenerRunner(SimpleNamespace(owner="test"), account, listener, ListenerSpec(name=listener.name))
        socket.stop_event = ReleaseOnRetry()
        provider = SimpleNamespace(parse_frame=lambda text, spec: [ringing(account, "-1", "t0")])
        socket._apply_burst(provider, ["a frame"], time.monotonic())
    finally:
        lock.release()
        connection_created.disconnect(dispatch_uid="test-impatient")
        connection.close()
    assert retries == [runner.DB_RETRY_SECONDS]  # the note failed twice (in the batch, then alone), then went in
    assert CallEvent.objects.filter(call__pbx_call_id="-1").count() == 1  # the burst itself stored once
    listener.refresh_from_db()
    assert listener.last_event_at is not None
