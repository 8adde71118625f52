"""Leases, handovers and the live workers on the real Redis (``telephony.sockets.leases``, ``workers``)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from telephony.sockets import workers
from telephony.sockets.leases import OFFERS_KEY, LeaseStore, lease_key, lease_owners, offer_key, offers
from telephony.sockets.supervisor import redis_client

IDS = (9101, 9102, 9103)


@pytest.fixture
def client():
    client = redis_client()
    keys = [lease_key(i) for i in IDS] + [offer_key(i) for i in IDS]
    client.delete(*keys, OFFERS_KEY, workers.WORKERS_KEY)
    yield client
    client.delete(*keys, OFFERS_KEY, workers.WORKERS_KEY)
    client.close()


def test_it_moves_a_lease_only_once_the_takers_socket_is_up(client):
    old, new = LeaseStore(client, "old", 5000), LeaseStore(client, "new", 5000)
    assert old.acquire(9101)
    assert old.offer(9101) and offers(client) == {9101: "old"}
    assert new.take(9101, "old")
    assert offers(client) == {}, "a taken offer is no longer open"
    assert not old.hand_off(9101, "new"), "not before the taker's socket is up"
    assert new.claim(9101, "old", ready=False) == 1
    assert not old.hand_off(9101, "new")
    assert new.claim(9101, "old", ready=True) == 1
    assert offers(client, [9101]) == {9101: "old|new|ready"}
    assert old.renew_many([9101]) == {9101: True}, "the owner holds it until it hands it off"
    assert old.hand_off(9101, "new")
    assert lease_owners(client, [9101]) == {9101: "new"} and not client.exists(offer_key(9101))
    assert new.claim(9101, "old", ready=True) == 2
    assert old.renew_many([9101]) == {9101: False}


def test_it_lets_only_one_of_two_takers_take_an_offer(client):
    old = LeaseStore(client, "old", 5000)
    old.acquire(9101)
    old.offer(9101)
    takers = [LeaseStore(redis_client(), f"taker-{n}", 5000) for n in range(8)]
    barrier, won = threading.Barrier(len(takers)), []

    def take(store):
        barrier.wait()
        if store.take(9101, "old"):
            won.append(store.owner)

    threads = [threading.Thread(target=take, args=(store,)) for store in takers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in takers:
        store.client.close()
    assert len(won) == 1 and offers(client, [9101]) == {9101: f"old|{won[0]}"}
    loser = next(store for store in takers if store.owner != won[0])
    assert loser.claim(9101, "old", ready=True) == 0, "the loser's claim is refused"


def test_it_gives_the_lease_to_a_ready_taker_when_the_owner_dies_and_keeps_it_with_the_owner_when_the_taker_dies(
        client):
    old, new = LeaseStore(client, "old", 5000), LeaseStore(client, "new", 300)
    old.acquire(9101)
    old.offer(9101)
    new.take(9101, "old")
    new.claim(9101, "old", ready=True)
    client.delete(lease_key(9101))  # the owner died: its lease expired
    assert new.claim(9101, "old", ready=True) == 2
    assert lease_owners(client, [9101]) == {9101: "new"}

    old.acquire(9102)
    old.offer(9102)
    new.take(9102, "old")
    new.claim(9102, "old", ready=False)  # renewed for 300 ms, then the taker dies
    time.sleep(0.5)
    assert offers(client, [9102]) == {} and not old.hand_off(9102, "new")
    assert lease_owners(client, [9102]) == {9102: "old"}


def test_it_gives_a_taken_offer_back_to_its_owner_at_once_when_the_taker_calls_it_off(client):
    old, new, other = (LeaseStore(client, name, 5000) for name in ("old", "new", "other"))
    old.acquire(9101)
    old.offer(9101)
    assert new.take(9101, "old")
    assert not other.call_off(9101, "old"), "only the taker calls its handover off"
    assert offers(client, [9101]) == {9101: "old|new"}
    assert new.call_off(9101, "old")
    assert offers(client, [9101]) == {}, "not counted as the taker's until the state expires"
    assert lease_owners(client, [9101]) == {9101: "old"} and new.claim(9101, "old", ready=True) == 0
    assert old.offer(9101) and offers(client) == {9101: "old"}, "the owner may offer it again"


class SlowRunner:
    """A taker's runner still logging in (its socket never came up), started long ago."""

    def __init__(self):
        self.connected = threading.Event()
        self.started_at = time.monotonic() - 3600
        self.stopped_keeping_listener = None

    def is_alive(self):
        return True

    def stop(self, keep_listener=False):
        self.stopped_keeping_listener = keep_listener


def test_it_calls_off_at_once_a_handover_whose_socket_did_not_come_up_in_time(client):
    from telephony.sockets.supervisor import Supervisor

    old = LeaseStore(client, "old", 5000)
    old.acquire(9101)
    old.offer(9101)
    taker = Supervisor(owner="taker")
    try:
        assert taker.leases.take(9101, "old")
        runner = taker.runners[9101] = SlowRunner()
        taker.taking[9101] = "old"
        taker._claim_taken()
    finally:
        taker._redis.close()
    assert runner.stopped_keeping_listener is True and 9101 not in taker.taking
    # Left as "old|taker" until it expired, it counted as the taker's: the owner neither kept nor re-offered it.
    assert offers(client, [9101]) == {}
    assert lease_owners(client, [9101]) == {9101: "old"}


class HeldRunner(SlowRunner):
    def retire(self):
        pass


def test_it_withdraws_offers_left_untaken_only_once_no_taker_is_taking_its_offers(client):
    from telephony.sockets.supervisor import Supervisor

    owner = Supervisor(owner="old")
    taker = LeaseStore(client, "new", 5000)
    try:
        owner.leases.ttl_ms = 5000
        for listener_id in IDS:
            assert owner.leases.acquire(listener_id) and owner.leases.offer(listener_id)
            owner.runners[listener_id] = HeldRunner()
            owner.offered[listener_id] = time.monotonic() - owner.handover_seconds - 1  # all offered long ago
        assert taker.take(9101, "old")  # a taker still at work on one of them
        owner._hand_off_ready()
        assert offers(client) == {9102: "old", 9103: "old"}, "a join takes longer than LISTENER_HANDOVER_SECONDS"
        taker.call_off(9101, "old")
        owner._hand_off_ready()  # 9101: called off, kept
        owner._hand_off_ready()
        assert offers(client) == {} and owner.offered == {}, "nobody takes them: withdrawn"
    finally:
        owner._redis.close()


def test_it_refuses_offers_of_listeners_not_held_and_withdraws_only_untaken_ones(client):
    old, other = LeaseStore(client, "old", 5000), LeaseStore(client, "other", 5000)
    other.acquire(9101)
    assert not old.offer(9101), "only the lease's holder offers it"
    old.acquire(9102)
    old.acquire(9103)
    old.offer(9102)
    old.offer(9103)
    other.take(9103, "old")
    assert old.withdraw(9102) and not old.withdraw(9103)
    assert offers(client) == {} and offers(client, [9103]) == {9103: "old|other"}
    assert client.zcard(OFFERS_KEY) == 0


def test_it_lists_every_lease_holder(client):
    LeaseStore(client, "a", 5000).acquire(9101)
    LeaseStore(client, "b", 5000).acquire(9103)
    owners = lease_owners(client)
    assert owners[9101] == "a" and owners[9103] == "b" and 9102 not in owners


def test_it_drops_a_worker_whose_heartbeat_stopped(client):
    workers.beat(client, "alive")
    workers.beat(client, "quiet")
    assert workers.live_workers(client, 1000) == ["alive", "quiet"]
    time.sleep(0.6)
    workers.beat(client, "alive")
    time.sleep(0.6)
    assert workers.live_workers(client, 1000) == ["alive"]
    assert client.zcard(workers.WORKERS_KEY) == 1, "a dead worker's entry is removed"
    workers.leave(client, "alive")
    assert workers.live_workers(client, 1000) == []


def test_it_takes_and_hands_off_many_in_one_go_as_one_by_one(client):
    old, new, late = (LeaseStore(client, name, 5000) for name in ("old", "new", "late"))
    for listener_id in IDS:
        assert old.acquire(listener_id) and old.offer(listener_id)
    assert late.take(9103, "old")
    assert new.take_many([(9101, "old"), (9102, "old"), (9103, "old")]) == {9101: True, 9102: True, 9103: False}
    assert new.claim(9101, "old", ready=True) == 1 and new.claim(9102, "old", ready=False) == 1
    assert old.hand_off_many([(9101, "new"), (9102, "new")]) == {9101: True, 9102: False}, "9102 not up yet"
    assert lease_owners(client, IDS) == {9101: "new", 9102: "old", 9103: "old"}
    assert old.hand_off_many([]) == {} and new.take_many([]) == {}


def test_it_tells_its_watchers_when_a_worker_joins_leaves_or_is_dropped_and_not_at_every_beat(client):
    changes = workers.watch(client)
    try:
        def published(timeout=1.0):  # the next message published (its subscription's confirmation left out)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                message = changes.get_message(timeout=left)
                if message is not None:
                    return message["data"].decode()
            return None

        workers.beat(client, "joiner")
        assert published() == "joiner"
        workers.beat(client, "joiner")
        assert published(0.3) is None, "a beat of a worker already live is no change"
        workers.beat(client, "quiet")
        assert published() == "quiet"
        time.sleep(0.6)
        workers.beat(client, "joiner")
        assert workers.live_workers(client, 500) == ["joiner"]  # the read that drops "quiet" tells
        assert published() == "dropped"
        workers.leave(client, "joiner")
        assert published() == "joiner"
        workers.leave(client, "joiner")
        assert published(0.3) is None, "leaving twice is no change"
        # Channels are not scoped by database: a watcher of another one (only subscribed: it writes nothing there).
        other_database = redis.Redis(connection_pool=redis.ConnectionPool(
            **{**client.connection_pool.connection_kwargs, "db": client.connection_pool.connection_kwargs["db"] + 1}))
        elsewhere = workers.watch(other_database)
        try:
            assert elsewhere.get_message(timeout=1.0) is None  # its subscription's confirmation, left out
            workers.beat(client, "joiner")
            assert published() == "joiner"
            assert elsewhere.get_message(timeout=0.3) is None, "a worker of another database is none of its own"
        finally:
            elsewhere.close()
            other_database.close()
    finally:
        changes.close()


def test_it_waits_for_its_next_scan_at_its_share_and_rebalances_at_once_when_a_worker_joins(client, settings,
                                                                                            monkeypatch):
    from telephony.sockets.fair_share import Decision
    from telephony.sockets.supervisor import Supervisor

    settings.LISTENER_SCAN_SECONDS = 60
    settings.LISTENER_LEASE_TTL_MS = 60000
    live_reads, rebalances = [], []
    real_live_workers = workers.live_workers

    def live_workers(*args, **kwargs):
        live_reads.append(time.monotonic())
        return real_live_workers(*args, **kwargs)

    def scan(self):  # one listener, none of it ours to hold: at its share with nothing under way
        self._candidates = {IDS[0]: None}
        self._live = real_live_workers(self._redis, self.heartbeat_ttl_ms)
        self._last_decision = Decision(target=0, cap=1)

    def rebalance(self, offer):
        rebalances.append((time.monotonic(), offer))
        self._live = real_live_workers(self._redis, self.heartbeat_ttl_ms)

    monkeypatch.setattr(workers, "live_workers", live_workers)
    monkeypatch.setattr(Supervisor, "_scan", scan)
    monkeypatch.setattr(Supervisor, "_rebalance", rebalance)
    supervisor = Supervisor(owner="at-its-share")
    supervisor.start()
    try:
        time.sleep(0.5)  # its first scan and cycle, and the wake its own first beat published
        del live_reads[:], rebalances[:]
        time.sleep(1.5)  # six ticks of HANDOVER_TICK_SECONDS
        assert (live_reads, rebalances) == ([], []), "it read the live workers between scans with nothing to do"
        joined = time.monotonic()
        workers.beat(client, "joiner")
        deadline = time.monotonic() + 3
        while not rebalances and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rebalances and rebalances[0][1] is True, "it did not offer its share when a worker joined"
        assert rebalances[0][0] - joined < 0.5
    finally:
        stopping = time.monotonic()
        supervisor.stop(timeout=5)
        assert not supervisor.is_alive() and time.monotonic() - stopping < 2
