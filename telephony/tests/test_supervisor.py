"""The socket supervisor in this process, holding myCrm sockets to the real simulator.

In-process (not in a Celery worker) so a test can slow the domain down and watch what the
runners and the keep-alive thread do meanwhile.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
import redis

from telephony import domain
from telephony.models import Call, Listener, PbxAccount
from telephony.providers import base
from telephony.sockets.leases import LeaseStore, lease_key
from telephony.sockets.supervisor import Supervisor, request_restart
from tests.e2e.test_istra_sockets import TERMINAL, connected_listeners, mycrm_account
from tests.faults.harness import FaultIstraControl
from tests.support.processes import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
KEEPALIVE_SECONDS = 1


@pytest.fixture
def fast_listeners(settings):
    settings.LISTENER_KEEPALIVE_SECONDS = KEEPALIVE_SECONDS
    settings.LISTENER_SCAN_SECONDS = 1
    settings.LISTENER_LEASE_TTL_MS = 3000
    settings.LISTENER_BACKOFF_CAP_SECONDS = 1


@pytest.fixture
def supervisor(fast_listeners, published):
    running = Supervisor(owner="test-supervisor")
    yield running
    if running.is_alive():
        running.stop(timeout=30)


@dataclass
class Held:
    sim: FaultIstraControl
    account: PbxAccount
    listener: Listener


@pytest.fixture
def held(hub, supervisor) -> Held:
    """The simulator up, one myCrm terminal, and the supervisor holding its socket."""
    hub.start(workers=0, web=False)
    sim = FaultIstraControl(hub.sim_url)
    account = mycrm_account(hub, sim)
    supervisor.start()
    [listener] = wait_for(lambda: connected_listeners(account), 30, what="the listener")
    return Held(sim, account, listener)


@pytest.fixture
def keepalives(monkeypatch) -> dict[int, list[float]]:
    """When each stream (by id) sent a keep-alive."""
    sent: dict[int, list[float]] = {}
    real = base.WebSocketStream.keepalive

    def timed(stream):
        sent.setdefault(id(stream), []).append(time.monotonic())
        return real(stream)

    monkeypatch.setattr(base.WebSocketStream, "keepalive", timed)
    return sent


class SlowDomain:
    """Holds every burst until released, recording what each call was given."""

    def __init__(self, monkeypatch):
        self.release = threading.Event()
        self.bursts: list[tuple[list, float | None]] = []
        self.first_burst = threading.Event()
        inside = threading.local()
        real_many, real_one = domain.apply_call_updates, domain.apply_call_update

        def many(updates, received=None):
            self.bursts.append((list(updates), received))
            self.first_burst.set()
            self.release.wait(30)
            inside.burst = True
            try:
                return real_many(updates, received=received)
            finally:
                inside.burst = False

        def one(update, received=None):
            if getattr(inside, "burst", False):  # real_many applying its updates one by one
                return real_one(update, received=received)
            return many([update], received)[0]  # a runner storing frame by frame is held the same way

        monkeypatch.setattr(domain, "apply_call_updates", many)
        monkeypatch.setattr(domain, "apply_call_update", one)


def test_it_sends_keepalives_on_time_while_its_runner_is_stuck_storing_a_frame(held, keepalives, monkeypatch):
    sim, account = held.sim, held.account
    slow = SlowDomain(monkeypatch)

    line = sim.incoming(TERMINAL, "0612345678")
    assert slow.first_burst.wait(10), "the frame never reached the domain"
    stuck_from = time.monotonic()
    time.sleep(4 * KEEPALIVE_SECONDS)
    stuck_until = time.monotonic()
    slow.release.set()

    times = sorted(t for sent in keepalives.values() for t in sent)
    assert sum(stuck_from <= t <= stuck_until for t in times) >= 3, "keep-alives stopped while the runner was stuck"
    gaps = [b - a for a, b in zip(times, times[1:]) if b > stuck_from]
    gaps.append(stuck_until - max(t for t in times if t <= stuck_until))
    # On time: one every KEEPALIVE_SECONDS, with room for a busy machine; a keep-alive waiting for the stuck
    # runner would leave a gap of the whole 4 intervals.
    assert max(gaps) <= 2.5 * KEEPALIVE_SECONDS, gaps
    wait_for(lambda: Call.objects.filter(account=account, pbx_call_id=line["callId"]).exists(), 10,
             what="the held frame to be stored after all")


def test_it_stores_the_frames_waiting_on_the_socket_as_one_burst(held, monkeypatch, caplog):
    sim, account = held.sim, held.account
    slow = SlowDomain(monkeypatch)

    first = sim.incoming(TERMINAL, "0612345678")
    assert slow.first_burst.wait(10)
    queued = [sim.incoming(TERMINAL, "0612345600")["callId"]]
    assert sim.push_frame("{not json", listener=None)["sockets"] == 1  # rejected alone, not with its burst
    queued += [sim.incoming(TERMINAL, f"061234560{n}")["callId"] for n in (1, 2)]
    time.sleep(0.5)  # the simulator has written them; they wait on the socket while the runner is held
    before_release = time.monotonic()
    slow.release.set()
    wait_for(lambda: Call.objects.filter(account=account).count() == 4, 10, what="four calls stored")

    [(updates, received), (waiting, waiting_received)] = slow.bursts
    assert [u.pbx_call_id for u in updates] == [first["callId"]]
    assert [u.pbx_call_id for u in waiting] == queued, "the waiting frames, in order, in one call"
    assert received < before_release <= waiting_received <= time.monotonic()
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("frame rejected")], caplog.text


def test_it_reconnects_on_a_restart_and_stops_at_once_though_its_runners_sleep_in_recv(held, supervisor):
    sim, account, listener = held.sim, held.account, held.listener
    first_connected = listener.connected_since

    request_restart(account.pk)
    wait_for(lambda: Listener.objects.filter(pk=listener.pk, state="connected",
                                             connected_since__gt=first_connected).exists(),
             10, what="the listener to reconnect for the restart")
    assert Listener.objects.get(pk=listener.pk).reconnects == 0, "a restart is not a failure"

    runners = list(supervisor.runners.values())
    started = time.monotonic()
    supervisor.stop(timeout=30)
    assert not supervisor.is_alive() and not any(r.is_alive() for r in runners)
    assert time.monotonic() - started < 5
    assert Listener.objects.get(pk=listener.pk).state == Listener.State.IDLE
    wait_for(lambda: sum(s["sockets"] for s in sim.sessions()) == 0, 5, what="the socket closed at the PBX")


def test_it_reconnects_a_socket_that_stopped_answering_its_keepalives(held):
    """A half-open path: no FIN, no frames, no pongs; only the missing pongs tell."""
    sim, account, listener = held.sim, held.account, held.listener
    time.sleep(3 * KEEPALIVE_SECONDS)
    assert Listener.objects.get(pk=listener.pk).reconnects == 0, "a socket answering its pings is left alone"

    assert sim.mute_pings(listener=None, silent=True)["sockets"] == 1
    wait_for(lambda: Listener.objects.filter(pk=listener.pk, reconnects=1, state="connected").exists(),
             8 * KEEPALIVE_SECONDS + 5, what="the dead socket replaced")
    line = sim.incoming(TERMINAL, "0612345678")
    wait_for(lambda: Call.objects.filter(account=account, pbx_call_id=line["callId"]).exists(), 10,
             what="a call on the new socket")


@pytest.fixture
def session_checked(settings, fast_listeners, published):
    """A supervisor whose keep-alives are too slow to notice anything within a test, checking sessions each second."""
    settings.LISTENER_KEEPALIVE_SECONDS = 60
    settings.ISTRA_SESSION_CHECK_SECONDS = 1
    running = Supervisor(owner="test-supervisor")
    yield running
    if running.is_alive():
        running.stop(timeout=30)


def test_it_logs_in_and_listens_again_at_once_when_a_session_check_finds_the_session_expired(
        hub, session_checked, caplog):
    """The PBX forgot the session but left its socket open and answering pings: only the check can tell."""
    hub.start(workers=0, web=False)
    sim = FaultIstraControl(hub.sim_url)
    account = mycrm_account(hub, sim)
    session_checked.start()
    [listener] = wait_for(lambda: connected_listeners(account), 30, what="the listener")
    time.sleep(2.5)  # two checks the PBX answered: the socket was healthy
    assert Listener.objects.get(pk=listener.pk).reconnects == 0

    sim.fail_next(1, 401, body={"code": "ROUTER_ERR_401", "message": "session expired or unknown"},
                  path="v1/crm/GetTerminals")
    expired = time.monotonic()
    wait_for(lambda: Listener.objects.filter(pk=listener.pk, reconnects=1, state="connected",
                                             connected_since__gt=listener.connected_since).exists(),
             10, what="the listener on a new session")
    # One check interval (1 s), then at once ("reconnecting now" below): seconds, not a keep-alive's 60 s.
    assert time.monotonic() - expired < 10, "one check interval, then at once: not a keep-alive's wait"
    assert [r for r in caplog.records if r.getMessage().startswith("session expired at the PBX; logging in again")]
    assert "reconnecting now" in caplog.text
    line = sim.incoming(TERMINAL, "0612345678")
    wait_for(lambda: Call.objects.filter(account=account, pbx_call_id=line["callId"]).exists(), 10,
             what="a call on the new socket")


def test_it_keeps_its_socket_when_redis_restarts_empty_and_forgets_the_lease(held, supervisor):
    """A Redis restart loses every lease key; stopping the runner then would leave calls unseen until a
    worker took the listener again, so the owner takes its lease back and keeps reading."""
    listener = held.listener
    store = supervisor.leases
    store.client.delete(lease_key(listener.pk))

    time.sleep(3 * supervisor.ttl_ms / 3000)  # three renewals
    assert store.holder(listener.pk) == supervisor.owner
    after = Listener.objects.get(pk=listener.pk)
    assert (after.reconnects, after.connected_since) == (0, listener.connected_since), "the socket was kept"
    assert listener.pk in supervisor.runners and supervisor.runners[listener.pk].is_alive()


def test_it_leaves_other_owners_one_lease_ttl_to_take_their_leases_back_after_a_redis_outage(
        held, supervisor, monkeypatch):
    listener = held.listener
    store = supervisor.leases
    # The owner's renewals are late (a busy process): its lease is gone for longer than the rival's scan period.
    real_renew, late_until = store.renew_many, time.monotonic() + 1.5
    monkeypatch.setattr(store, "renew_many",
                        lambda ids: {i: True for i in ids} if time.monotonic() < late_until else real_renew(ids))
    rival = Supervisor(owner="rival-supervisor")
    real_mget, failures = rival._redis.mget, []

    def down_once(keys):
        if not failures:
            failures.append(keys)
            raise redis.ConnectionError("Redis is restarting")
        return real_mget(keys)

    monkeypatch.setattr(rival._redis, "mget", down_once)
    store.client.delete(lease_key(listener.pk))
    rival.start()
    try:
        # Through the rival's hold-off the owner takes its lease back. (The rival, first by id, is then owed
        # the listener by the fair share, and gets it by a handover: still no reconnect.)
        holders, hold_off_ends = set(), time.monotonic() + supervisor.ttl_ms / 1000
        while time.monotonic() < hold_off_ends:
            holders.add(store.holder(listener.pk))
            time.sleep(0.05)
        assert failures, "the rival saw Redis down"
        assert store.holder(listener.pk) == supervisor.owner or listener.pk in rival.taking
        assert "rival-supervisor" not in holders, "the rival took a listener whose owner was still reading it"
        time.sleep(1.5)
        assert Listener.objects.get(pk=listener.pk).reconnects == 0
        assert len(set(supervisor.runners) - set(supervisor.taking) | set(rival.runners) - set(rival.taking)) == 1
    finally:
        rival.stop(timeout=30)


def test_it_renews_a_held_lease_takes_back_a_vanished_one_and_never_takes_another_owners():
    from telephony.sockets.supervisor import redis_client

    client = redis_client()
    mine, theirs = LeaseStore(client, "me", 5000), LeaseStore(client, "them", 5000)
    client.delete(lease_key(9001), lease_key(9002), lease_key(9003))
    try:
        assert mine.acquire(9001) and theirs.acquire(9002)
        assert mine.renew_many([9001, 9002, 9003]) == {9001: True, 9002: False, 9003: True}
        assert [mine.holder(9001), mine.holder(9002), mine.holder(9003)] == ["me", "them", "me"]
        assert 0 < client.pttl(lease_key(9003)) <= 5000, "a lease taken back expires like any other"
        mine.release(9002)
        assert theirs.holder(9002) == "them", "release is only the owner's"
    finally:
        client.delete(lease_key(9001), lease_key(9002), lease_key(9003))


def test_it_holds_at_most_its_cap_of_listeners_and_leaves_the_rest_to_another_worker(
        hub, fast_listeners, published, settings):
    """The first worker to scan leased every listener, so a second worker held nothing and a benchmark's
    ``--workers 2`` ran every socket in one process. With LISTENER_MAX_PER_WORKER each takes up to its cap."""
    hub.start(workers=0, web=False)
    sim = FaultIstraControl(hub.sim_url)
    account = mycrm_account(hub, sim, terminals=(TERMINAL, "5985841581756135024", "5985841581756135025"))
    settings.LISTENER_MAX_PER_WORKER = 2
    first, second = Supervisor(owner="first-supervisor"), Supervisor(owner="second-supervisor")
    first.start()
    try:
        wait_for(lambda: len(first.runners) == 2, 30, what="the first worker at its cap")
        time.sleep(2.5)  # two more scans: it takes no third
        assert len(first.runners) == 2
        second.start()
        listeners = wait_for(lambda: connected_listeners(account), 30, what="every listener connected")
        assert len(listeners) == 3 and len(second.runners) == 1
        holders = {listener.pk: first.leases.holder(listener.pk) for listener in listeners}
        assert sorted(holders.values()) == ["first-supervisor", "first-supervisor", "second-supervisor"]
        assert set(first.runners) | set(second.runners) == set(holders) and not set(first.runners) & set(second.runners)
    finally:
        for running in (first, second):
            if running.is_alive():
                running.stop(timeout=30)
