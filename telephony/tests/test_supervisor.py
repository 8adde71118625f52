"""The socket supervisor in this process, holding myCrm sockets to the real simulator.

In-process (not in a Celery worker) so a test can slow the domain down and watch what the
runners and the keep-alive thread do meanwhile.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from telephony import domain
from telephony.models import Call, Listener, PbxAccount
from telephony.providers import base
from telephony.supervisor import Supervisor, request_restart
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
    assert max(gaps) <= 1.6 * KEEPALIVE_SECONDS, gaps
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
