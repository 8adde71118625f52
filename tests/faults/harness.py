"""The fault suite's harness: a seeded hub, steady calls, live agent consoles, and the invariant.

The promise under test is that ctihub never loses a call, whatever breaks. A fault test
(and ``bench/soak.py``) reads like this::

    world = seed_world(hub)                        # myRCC enterprise + agents + retailCRM integration
    with Consoles(world) as consoles:
        with Traffic(world) as traffic:
            traffic.wait_for_calls(5)
            <inject a fault, several times>        # world.istra has the simulator's fault switches
        figures = check_invariant(world, traffic, consoles)   # settles, then asserts every figure is 0

API (kept small on purpose; ``tests/faults/test_crm_faults.py`` and ``test_telepo_faults.py`` build on it):

``seed_world(hub, agents=4) -> World``
    An Istra myRCC enterprise with ``agents`` extensions, one ctihub agent each (user ``fault-agent-N``,
    retailCRM user N+1), the account's listener connected, and a retailCRM integration registered at
    the simulated retailCRM. ``World.istra`` / ``World.crm`` drive the two simulators.
``Traffic(world, calls_per_second=2.0, seed=...)``
    A thread placing calls on free extensions through the simulator's control API: incoming and
    outgoing, answered or not, some held. ``start()``/``stop()`` (or ``with``); ``stop()`` lets the calls
    in progress finish. ``started`` counts calls placed; ``wait_for_calls(n)`` waits for ``n`` more.
``Consoles(world)``
    One console websocket per agent in a background thread, each reconnecting with backoff as the
    page does and keeping what it shows (snapshot, then cards by version). ``reconnects_ms`` lists
    how long each reconnect took (socket lost -> new snapshot received).
``check_invariant(world, traffic, consoles=None, settle=60) -> Figures``
    Waits until the simulator has no live call and ctihub and retailCRM have caught up (or ``settle``
    seconds pass), then compares every call the simulator made with ctihub's database, retailCRM's
    events and uploads, and every console's view. Asserts that every loss figure is 0 and returns them.
``Faults(world, consoles=None, redis=None, outage_seconds=4)``
    One method per fault (``Faults.KINDS``: PBX socket closed, pings unanswered, garbage frames, session
    expired, PBX 503, worker killed, workers restarted, daphne restarted, Redis restarted, database
    connections dropped); each returns once the hub has recovered. ``inject(kind)`` counts them.
``run_with_faults(world, seed, inject, rounds=3, calls_between=3) -> (Figures, Faults)``
    The usual test body: consoles, traffic, ``inject(faults)`` each round, then ``check_invariant``.
``Figures.lines()``
    Figures as ``name: value`` lines, for the soak script.
``fault_settings(**extra)``, ``start_hub(env, workers=2)``, ``PrivateRedis``
    The hub's settings for fault runs, starting one, and a private redis-server that may be restarted.
``wait_connected(world, timeout)``, ``listener_reconnects(world)``, ``wait_reconnected(world, before, timeout)``
    Until the account's listener is connected; how often it went down; until it went down and came back.

Fixtures (``tests/faults/conftest.py``): ``fault_hub`` and ``fault_world`` (one per module: mark the tests
``pytest.mark.django_db``, not transactional, and have them write nothing themselves), ``private_redis``.
The loss figures count only calls the PBX told a running hub about (``Figures.calls_unreported`` are apart).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import json
import random
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

import requests

from tests.support.processes import Hub, free_port, wait_for
from tests.support.retailcrm_sim import API_KEY, RetailCrmControl
from tests.support.sim_control import IstraControl

ENTERPRISE = "faults"
RCC_LOGIN, RCC_PASSWORD = "faults-rcc", "faults-rcc-secret"
LISTENER_NAME = "CallLines"
AGENT_PASSWORD = "agent-pass-123"


def fault_settings(**extra: str) -> dict[str, str]:
    """The hub's settings for fault runs: the test suite's fast supervisor timings, short HTTP timeouts."""
    from conftest import FAST_LISTENERS  # the repository's root conftest: lease TTL 3 s, scans every second

    return {
        **FAST_LISTENERS,
        # A dead path is noticed after a few keep-alive intervals: short ones keep the ping faults short.
        "LISTENER_KEEPALIVE_SECONDS": "2",
        "LOG_LEVEL": "INFO",
        # Agents' HTTP calls and the CRM sync should not queue behind a PBX that takes seconds to fail.
        "HTTP_CONNECT_TIMEOUT_MS": "1000",
        "HTTP_READ_TIMEOUT_MS": "3000",
        # A card lost between commit and publish (a worker killed) reaches its console within seconds.
        "CONSOLE_RESYNC_SECONDS": "5",
        **extra,
    }


def start_hub(env: dict[str, str], workers: int = 2) -> Hub:
    """Simulator, daphne and ``workers`` Celery workers; stopped again if any of them fails to start."""
    hub = Hub(env)
    try:
        hub.start(workers=workers, web=True)
    except BaseException:
        hub.stop()
        raise
    return hub


class PrivateRedis:
    """A redis-server of our own on a free port, that a fault may stop and start again (the shared one never)."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ctihub-fault-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> "PrivateRedis":
        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: redis.Redis(port=self.port, socket_timeout=1).ping(), 10, what="the private redis-server")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self, down_seconds: float = 0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class FaultIstraControl(IstraControl):
    """The Istra control API plus the switches the fault suite flips."""

    def configure(self, **config):
        return self._call("PATCH", "/config", **config)

    def set_iptc(self, up: bool):
        return self._call("POST", "/iptc", up=up)

    def mute_pings(self, listener: str | None = LISTENER_NAME, mute: bool = True, silent: bool = False):
        return self._call("POST", "/faults/mute-pings", listener=listener, mute=mute, silent=silent)

    def push_frame(self, text: str, repeat: int = 1, prefix: str = "", suffix: str = "",
                   listener: str | None = LISTENER_NAME):
        """Push ``prefix + text * repeat + suffix`` as one frame (the text is multiplied at the simulator)."""
        return self._call("POST", "/faults/push-frame", text=text, repeat=repeat, prefix=prefix, suffix=suffix,
                          listener=listener)

    def websockets(self):
        return self._call("GET", "/websockets")


@dataclass
class AgentSeat:
    username: str
    agent_id: int
    extension_id: str
    number: str
    crm_user_id: int
    cookie: str  # a logged-in session, made while seeding: a test's own writes are rolled back, unseen


@dataclass
class World:
    hub: object
    istra: FaultIstraControl
    crm: RetailCrmControl
    account_id: int
    integration_id: int
    seats: list[AgentSeat]
    # (start, end) epoch ms in which the process reading the PBX socket was dead or being replaced: a call
    # that began and ended inside one was at best told to a process that died before reading it.
    blind_windows: list[tuple[int, int]] = field(default_factory=list)

    def listener_ids(self) -> list[int]:
        from telephony.models import Listener

        return list(Listener.objects.filter(account_id=self.account_id).values_list("pk", flat=True))


def seed_world(hub, agents: int = 4) -> World:
    """The enterprise, its agents and the retailCRM integration, as an admin would set them up."""
    from crm_sync import services
    from crm_sync.models import RetailCrmIntegration
    from telephony import control
    from telephony.models import PbxAccount, Terminal
    from tests.factories import make_account, make_agent

    istra, crm = FaultIstraControl(hub.sim_url), RetailCrmControl(hub.sim_url)
    crm.reset()
    crm.add_api_key(API_KEY)
    istra.add_user(RCC_LOGIN, RCC_PASSWORD, enterprise=ENTERPRISE, myrcc=True)
    seats = []
    for n in range(agents):
        extension_id, number = str(5985841581756136000 + n), str(301 + n)
        istra.add_extension(extension_id, number, enterprise=ENTERPRISE, label=f"Agent {n}", myrcc=True)
        crm.add_user(n + 1, firstName="Agent", lastName=str(n))
        agent = make_agent(f"fault-agent-{n}", extension_code=number, retailcrm_user_id=str(n + 1))
        seats.append(AgentSeat(f"fault-agent-{n}", agent.pk, extension_id, number, n + 1,
                               session_cookie(agent.user.username)))
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=f"{hub.sim_url}/restletrouter",
                           login=RCC_LOGIN, password=RCC_PASSWORD, enterprise=ENTERPRISE)
    control.sync_terminals(account)
    for seat in seats:
        Terminal.objects.filter(account=account, pbx_id=seat.extension_id).update(agent_id=seat.agent_id)
    integration = RetailCrmIntegration.objects.create(name="faults-shop", crm_url=hub.sim_url, api_key=API_KEY,
                                                      module_code="ctihub")
    services.register_integration(integration)
    world = World(hub, istra, crm, account.pk, integration.pk, seats)
    if hub.workers:
        wait_connected(world, 60)
    return world


def wait_connected(world: World, timeout: float = 30) -> None:
    from telephony.models import Listener

    def connected():
        states = list(Listener.objects.filter(account_id=world.account_id).values_list("state", flat=True))
        return states and all(state == Listener.State.CONNECTED for state in states)

    wait_for(connected, timeout, interval=0.2, what="the account's listeners to connect")


def listener_owner(world: World) -> str:
    """The supervisor holding the account's listener: ``host:pid:suffix`` of a worker process."""
    from telephony.models import Listener

    return Listener.objects.get(account_id=world.account_id).owner


def listener_reconnects(world: World) -> int:
    """How many times the account's listeners have gone down so far (``Listener.reconnects``)."""
    from telephony.models import Listener

    return sum(Listener.objects.filter(account_id=world.account_id).values_list("reconnects", flat=True))


def wait_reconnected(world: World, reconnects_before: int, timeout: float = 45) -> None:
    """Until the listener has noticed a fault (its reconnect count grew) and is connected again."""
    wait_for(lambda: listener_reconnects(world) > reconnects_before, timeout, interval=0.2,
             what="the listener to notice the fault")
    wait_connected(world, timeout)


# --- faults -------------------------------------------------------------------------------------

GARBAGE_FRAMES = [
    "{not json",
    "[]",
    "null",
    json.dumps({"listenerName": LISTENER_NAME}),
    json.dumps({"listenerName": LISTENER_NAME, "item": "nope"}),
    json.dumps({"listenerName": LISTENER_NAME, "item": [{"lineId": None, "state": "talking"}]}),
    json.dumps({"listenerName": LISTENER_NAME, "item": [{"restUri": "v1/rcc/CallLine/-1", "state": "exploded"}]}),
    json.dumps({"listenerName": "SomebodyElse", "item": []}),
    "\x00\x01\x02\xff",
]


class Faults:
    """Each method injects one fault into a running hub and returns once it is over and the hub has recovered
    from it (the listener connected again, consoles back), so faults can follow each other in a loop.

    ``redis`` is the hub's :class:`PrivateRedis` (needed only by ``redis_restarted``); ``consoles`` lets
    ``daphne_restarted`` wait for every console to come back. ``injected`` counts faults by name and
    ``takeovers_s`` how long a killed worker's listener took to be held again.
    """

    KINDS = ("pbx_socket_closed", "pings_unanswered", "garbage_frames", "session_expired", "pbx_503",
             "worker_killed", "workers_restarted", "daphne_restarted", "redis_restarted", "database_dropped")

    def __init__(self, world: World, consoles: "Consoles | None" = None, redis: PrivateRedis | None = None,
                 outage_seconds: float = 4, recovery_timeout: float = 60):
        self.world, self.hub, self.consoles, self.redis = world, world.hub, consoles, redis
        self.outage_seconds = outage_seconds
        self.timeout = recovery_timeout
        self.injected: collections.Counter = collections.Counter()
        self.takeovers_s: list[float] = []

    def inject(self, kind: str) -> None:
        getattr(self, kind)()
        self.injected[kind] += 1

    # A worker reads a frame, then stores it a moment later (a burst, its database thread): what it read in
    # that moment before a SIGKILL dies with it. Seen once in six full runs under the parallel suite's load:
    # a call rung 0.5 s before the kill and ended before the takeover was never stored.
    READ_NOT_YET_STORED_MS = 1000

    def _blind(self, fault, read_not_yet_stored_ms: int = 0) -> None:
        """Run ``fault``, noting it as a window in which no process read the PBX socket (or read and died
        before storing: the window then opens ``read_not_yet_stored_ms`` before the fault)."""
        started = int(time.time() * 1000) - read_not_yet_stored_ms
        try:
            fault()
        finally:
            self.world.blind_windows.append((started, int(time.time() * 1000)))

    def _reconnected_after(self, fault) -> None:
        before = listener_reconnects(self.world)
        fault()
        wait_reconnected(self.world, before, self.timeout)

    def pbx_socket_closed(self) -> None:
        self._reconnected_after(lambda: self.world.istra.drop_websockets())

    def pings_unanswered(self, silent: bool = True) -> None:
        """``silent``: a half-open path (no pongs, no frames) the hub must notice on its own."""
        if silent:
            self._reconnected_after(lambda: self.world.istra.mute_pings(silent=True))
        else:
            self.world.istra.mute_pings()
            time.sleep(3 * float(self.hub.env.get("LISTENER_KEEPALIVE_SECONDS", "5")))
            self.world.istra.mute_pings(mute=False)
            wait_connected(self.world, self.timeout)

    def garbage_frames(self) -> None:
        istra = self.world.istra
        for text in GARBAGE_FRAMES:
            istra.push_frame(text)
        istra.push_frame("x", repeat=4 * 1024 * 1024)  # 4 MiB of not-JSON in one frame
        junk = {"restUri": "v1/rcc/CallLine/-999999", "state": "exploded", "displayedNumber": "0" * 64}
        istra.push_frame(json.dumps(junk) + ",", repeat=30000,  # a 4 MiB frame of JSON with a bad item in it
                         prefix=f'{{"listenerName": "{LISTENER_NAME}", "item": [', suffix="{}]}")
        wait_connected(self.world, self.timeout)

    def session_expired(self) -> None:
        self._reconnected_after(lambda: self.world.istra.expire_sessions())

    def pbx_503(self) -> None:
        """IPTC down: REST answers 503, and the socket is cut, so the hub cannot come back (binding a listener
        is REST) until the outage ends; meanwhile calls go on, and it must catch up on them."""
        def outage():
            self.world.istra.set_iptc(False)
            self.world.istra.drop_websockets()
            time.sleep(self.outage_seconds)
            self.world.istra.set_iptc(True)

        self._reconnected_after(outage)

    def worker_killed(self) -> None:
        """SIGKILL the worker holding the listener; another takes it within the lease TTL; a new one is started."""
        self._blind(self._kill_holder, self.READ_NOT_YET_STORED_MS)
        self.hub.start_worker()  # back to as many workers as before

    def _kill_holder(self) -> None:
        owner = listener_owner(self.world)
        pid = int(owner.split(":")[1])
        index = next(n for n, worker in enumerate(self.hub.workers) if worker.process.pid == pid)
        killed_at = time.monotonic()
        self.hub.kill_worker(index)
        wait_for(lambda: listener_owner(self.world) not in ("", owner), self.timeout, interval=0.1,
                 what="another worker to take the listener over")
        wait_connected(self.world, self.timeout)
        self.takeovers_s.append(time.monotonic() - killed_at)

    def workers_restarted(self) -> None:
        def restart():
            self.hub.restart_workers()
            wait_connected(self.world, self.timeout)

        self._blind(restart)

    def daphne_restarted(self) -> None:
        reconnected = len(self.consoles.reconnects_ms) if self.consoles else 0
        self.hub.restart_web()
        if self.consoles is not None:
            wait_for(lambda: len(self.consoles.reconnects_ms) >= reconnected + len(self.consoles.views),
                     self.timeout, interval=0.1, what="every console to reconnect")

    def redis_restarted(self, down_seconds: float = 2) -> None:
        assert self.redis is not None, "a Redis fault needs the hub on a PrivateRedis"
        self.redis.restart(down_seconds)
        wait_connected(self.world, self.timeout)

    def database_dropped(self) -> int:
        """pg_terminate_backend on every session of the hub's database but our own."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            cut = cursor.fetchone()[0]
        wait_connected(self.world, self.timeout)
        return cut


def run_with_faults(world: World, seed: int, inject, rounds: int = 3, calls_between: int = 3):
    """Steady calls with consoles open, ``inject(faults)`` ``rounds`` times while they run, then the invariant.

    Returns ``(figures, faults)``; ``inject`` is e.g. ``Faults.pbx_socket_closed`` or a lambda.
    """
    with Consoles(world) as consoles:
        faults = Faults(world, consoles)
        with Traffic(world, seed=seed) as traffic:
            for _round in range(rounds):
                traffic.wait_for_calls(calls_between)
                inject(faults)
            traffic.wait_for_calls(calls_between)
        return check_invariant(world, traffic, consoles), faults


# --- traffic ------------------------------------------------------------------------------------

@dataclass
class PlacedCall:
    call_id: str
    extension_id: str
    incoming: bool
    story: str


class StartStop:
    """``with`` starts and stops it."""

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Traffic(StartStop, threading.Thread):
    """Steady calls through the simulator's control API; each call plays a short story on a free extension.

    Stories: answered and hung up; answered, held, resumed, hung up; missed (the caller gives up).
    A fifth of the calls are dialled from the handset instead of coming in. Moves the simulator refuses
    (an agent acted from the console meanwhile) end the story; the call is still checked.
    """

    def __init__(self, world: World, calls_per_second: float = 2.0, seed: int | None = None,
                 ring_seconds=(0.2, 1.2), talk_seconds=(0.3, 2.5)):
        super().__init__(name="fault-traffic", daemon=True)
        self.istra = world.istra
        self.extensions = [seat.extension_id for seat in world.seats]
        self.interval = 1.0 / calls_per_second
        self.rng = random.Random(seed)
        self.ring_seconds, self.talk_seconds = ring_seconds, talk_seconds
        self.placed: list[PlacedCall] = []
        self.refused_moves = 0
        self.errors: list[str] = []
        self._busy: set[str] = set()
        self._agenda: list[tuple[float, int, object]] = []  # (when, tie-breaker, step)
        self._order = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def started(self) -> int:
        return len(self.placed)

    def stop(self, timeout: float = 60) -> None:
        """No new calls; the ones in progress play to their end."""
        self._stopping.set()
        self.join(timeout)
        assert not self.is_alive(), "the traffic thread did not finish its calls"

    def wait_for_calls(self, more: int, timeout: float = 60) -> None:
        target = self.started + more
        wait_for(lambda: self.started >= target, timeout, interval=0.1, what=f"{more} more calls")

    def run(self) -> None:
        next_call = time.monotonic()
        while True:
            now = time.monotonic()
            if not self._stopping.is_set() and now >= next_call:
                self._place_call()
                next_call = now + self.interval * self.rng.uniform(0.5, 1.5)
            while self._agenda and self._agenda[0][0] <= now:
                _, _, step = heapq.heappop(self._agenda)
                step()
            if self._stopping.is_set() and not self._agenda:
                return
            time.sleep(0.02)

    def _later(self, seconds: float, step) -> None:
        self._order += 1
        heapq.heappush(self._agenda, (time.monotonic() + seconds, self._order, step))

    def _place_call(self) -> None:
        free = [e for e in self.extensions if e not in self._busy]
        if not free:
            return
        extension, rng = rng_choice(self.rng, free), self.rng
        incoming = rng.random() < 0.8
        number = f"+3361{rng.randrange(10**7, 10**8)}"
        try:
            line = self.istra.incoming(extension, number) if incoming else self.istra.outgoing(extension, number)
        except (AssertionError, requests.RequestException) as exc:
            self.errors.append(f"placing a call: {exc}")
            return
        story = rng.choices(["answered", "held", "missed"], weights=[6, 2, 2])[0]
        call = PlacedCall(line["callId"], extension, incoming, story)
        self.placed.append(call)
        self._busy.add(extension)
        ring = rng.uniform(*self.ring_seconds)
        if story == "missed":
            self._later(ring, lambda: self._end(call))
        else:
            self._later(ring, lambda: self._move(call, "answer", self._talk))

    def _talk(self, call: PlacedCall) -> None:
        talk = self.rng.uniform(*self.talk_seconds)
        if call.story == "held":
            self._later(talk / 3, lambda: self._move(
                call, "hold", lambda c: self._later(talk / 3, lambda: self._move(
                    c, "unhold", lambda c2: self._later(talk / 3, lambda: self._end(c2)))))
            )
        else:
            self._later(talk, lambda: self._end(call))

    def _move(self, call: PlacedCall, move: str, then) -> None:
        response = requests.post(f"{self.istra.base}/calls/{call.call_id}/{move}", json={}, timeout=20)
        if response.status_code == 409:  # the line moved on without us: its story ends here
            self.refused_moves += 1
            self._end(call)
        elif response.status_code >= 400:
            self.errors.append(f"{move} {call.call_id}: {response.status_code} {response.text[:200]}")
            self._end(call)
        else:
            then(call)

    def _end(self, call: PlacedCall) -> None:
        response = requests.post(f"{self.istra.base}/calls/{call.call_id}/hangup", json={"cause": "disconnect"},
                                 timeout=20)
        if response.status_code >= 400 and response.status_code != 409:
            self.errors.append(f"hangup {call.call_id}: {response.status_code} {response.text[:200]}")
        self._busy.discard(call.extension_id)


def rng_choice(rng: random.Random, items: list):
    return items[rng.randrange(len(items))]


# --- agent consoles -----------------------------------------------------------------------------

class ConsoleView:
    """What one agent's page shows: the last snapshot, then every newer card."""

    def __init__(self, seat: AgentSeat):
        self.seat = seat
        self.cards: dict[int, dict] = {}
        self.seen: dict[int, list[str]] = collections.defaultdict(list)  # per call, "v<version> <state>" as it came
        self.connected = False
        self.snapshots = 0
        self.lost_at: float | None = None

    def apply(self, message: dict) -> None:
        if message.get("type") == "snapshot":
            self.cards = {card["id"]: card for card in message["calls"]}
            self.snapshots += 1
            for card in message["calls"]:
                self.seen[card["id"]].append(f"snapshot v{card['version']} {card['state']}")
        elif message.get("type") == "card":
            card = message["card"]
            self.seen[card["id"]].append(f"v{card['version']} {card['state']}")
            shown = self.cards.get(card["id"])
            if shown is None or card["version"] > shown["version"]:
                self.cards[card["id"]] = card


class Consoles(StartStop):
    """Every agent's console websocket, held from a background asyncio loop, reconnecting like the page."""

    BACKOFF_BASE, BACKOFF_CAP = 0.1, 2.0
    SNAPSHOT_WITHIN = 10.0  # seconds from the handshake to the snapshot before the page gives up and retries

    def __init__(self, world: World):
        self.hub = world.hub
        self.world = world
        self.views = [ConsoleView(seat) for seat in world.seats]
        self.reconnects_ms: list[float] = []
        self.close_codes: collections.Counter = collections.Counter()
        self.snapshots_late = 0  # sockets accepted that sent no snapshot within SNAPSHOT_WITHIN
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-consoles", daemon=True)
        self._tasks: list = []
        self.stopped = False

    def start(self, timeout: float = 30) -> None:
        self._thread.start()
        self._session = asyncio.run_coroutine_threadsafe(self._open_session(), self._loop).result(10)
        for view in self.views:
            self._tasks.append(asyncio.run_coroutine_threadsafe(self._hold(view, view.seat.cookie), self._loop))
        wait_for(lambda: all(v.snapshots for v in self.views), timeout, interval=0.1, what="every console's snapshot")

    def stop(self) -> None:
        self.stopped = True
        for task in self._tasks:
            task.cancel()
        asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def all_connected(self) -> bool:
        return all(view.connected for view in self.views)

    async def _open_session(self):
        import aiohttp

        return aiohttp.ClientSession()

    async def _hold(self, view: ConsoleView, cookie: str) -> None:
        import aiohttp

        url = self.hub.web_url.replace("http", "ws", 1) + "/ws/console/"
        attempt = 0
        while True:
            try:
                async with self._session.ws_connect(url, headers={"Cookie": cookie, "Origin": self.hub.web_url},
                                                    max_msg_size=0, heartbeat=None,
                                                    timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
                    try:
                        first = await ws.receive(timeout=self.SNAPSHOT_WITHIN)
                    except asyncio.TimeoutError:
                        # Accepted, then nothing: the page would show an empty console. Counted, then retried.
                        self.snapshots_late += 1
                        raise
                    message = first
                    while message.type == aiohttp.WSMsgType.TEXT:
                        data = message.json()
                        view.apply(data)
                        if data.get("type") == "snapshot":
                            attempt = 0
                            view.connected = True
                            if view.lost_at is not None:
                                self.reconnects_ms.append((time.monotonic() - view.lost_at) * 1000)
                                view.lost_at = None
                        message = await ws.receive()
                    self.close_codes[ws.close_code] += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # daphne down or restarting: the page retries
                self.close_codes[exc.__class__.__name__] += 1
            if view.connected or view.lost_at is None:
                view.connected = False
                view.lost_at = view.lost_at or time.monotonic()
            delay = random.uniform(0, min(self.BACKOFF_CAP, self.BACKOFF_BASE * 2 ** attempt))
            attempt += 1
            await asyncio.sleep(delay)


def session_cookie(username: str) -> str:
    """A logged-in Django session for ``username``, as the login page would leave in the browser."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    user = get_user_model().objects.get(username=username)
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"


# --- the invariant ------------------------------------------------------------------------------

@dataclass
class Figures:
    calls_checked: int = 0
    calls_lost: int = 0  # the simulator made it; ctihub has no record, or retailCRM never got its upload
    wrong_final_state: int = 0  # ctihub's record is not ended, or disagrees on answered/direction/agent
    duplicated_records: int = 0
    duplicated_events: int = 0
    missing_events: int = 0
    duplicated_uploads: int = 0
    stale_consoles: int = 0  # console cards that differ from the database
    snapshots_late: int = 0  # console sockets accepted that then sent no snapshot within 10 s
    # Calls the PBX never told any client of (they began and ended while no socket was bound), or told only
    # a worker that was killed before reading it (they began and ended while the socket changed hands):
    # myRCC has no call history to learn them from, so they are counted apart and not checked.
    calls_unreported: int = 0
    reconnect_p99_ms: float = 0.0
    reconnects: int = 0
    problems: list[str] = field(default_factory=list)

    LOSS_FIGURES = ("calls_lost", "wrong_final_state", "duplicated_records", "duplicated_events",
                    "missing_events", "duplicated_uploads", "stale_consoles", "snapshots_late")

    def lines(self) -> list[str]:
        return [f"{name}: {getattr(self, name)}" for name in (
            "calls_checked", "calls_unreported", *self.LOSS_FIGURES, "reconnects", "reconnect_p99_ms")]

    def assert_clean(self) -> None:
        bad = {name: getattr(self, name) for name in self.LOSS_FIGURES if getattr(self, name)}
        assert not bad and self.calls_checked, f"{bad} checked={self.calls_checked}; first problems: " + \
            "; ".join(self.problems[:15])


def p99(samples: list[float]) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def check_invariant(world: World, traffic: Traffic, consoles: Consoles | None = None,
                    settle: float = 60, assert_clean: bool = True) -> Figures:
    """Stop the traffic, let everything settle, then compare every call end to end."""
    assert consoles is None or not consoles.stopped, "check the invariant while the consoles still run"
    if traffic.is_alive():
        traffic.stop()
    assert not traffic.errors, traffic.errors[:5]
    settled = _settle(world, traffic, consoles, settle)
    figures = _compare(world, traffic, consoles)
    if not settled:
        figures.problems.insert(0, f"not settled after {settle}s")
    if consoles is not None:
        figures.reconnects = len(consoles.reconnects_ms)
        figures.reconnect_p99_ms = round(p99(consoles.reconnects_ms), 1)
    if assert_clean:
        figures.assert_clean()
    return figures


def _settle(world: World, traffic: Traffic, consoles: Consoles | None, timeout: float) -> bool:
    """True once the simulator is idle and ctihub, retailCRM and every console agree."""
    deadline = time.monotonic() + timeout
    sweep_at = time.monotonic() + 10
    while time.monotonic() < deadline:
        figures = _compare(world, traffic, consoles)
        # Late snapshots are counted once and for all; the rest can still come right.
        if not any(getattr(figures, name) for name in Figures.LOSS_FIGURES if name != "snapshots_late"):
            return True
        if time.monotonic() >= sweep_at:  # what beat would do every few minutes, sooner
            _run_crm_sweep(world)
            sweep_at = time.monotonic() + 10
        time.sleep(1)
    return False


def _run_crm_sweep(world: World) -> None:
    """Queue the retailCRM sweep on the hub's own broker (a Redis-fault hub has a private one)."""
    from crm_sync.tasks import sweep_task
    from ctihub.celery import app

    try:
        with app.connection_for_write(world.hub.env["REDIS_URL"]) as connection:
            sweep_task.apply_async(connection=connection)
    except Exception:  # a broker that is being faulted: the next round tries again
        pass


def _compare(world: World, traffic: Traffic, consoles: Consoles | None) -> Figures:
    from telephony.models import Call

    figures = Figures()
    problems = figures.problems
    truth = {line["callId"]: line for line in world.istra.calls()}
    placed = {call.call_id: call for call in traffic.placed}
    still_live = [call_id for call_id in placed if truth.get(call_id, {}).get("state") != "dropped"]
    if still_live:
        problems.append(f"simulator still has live calls {still_live[:5]}")
    seats = {seat.extension_id: seat for seat in world.seats}
    records = collections.defaultdict(list)
    for call in Call.objects.filter(account_id=world.account_id):
        records[call.pbx_call_id].append(call)
    events = collections.defaultdict(list)
    for event in world.crm.events():
        events[event.get("callExternalId")].append(event["type"])
    uploaded = collections.Counter()
    for upload in world.crm.uploads():
        for call in upload["calls"]:
            uploaded[call.get("externalId")] += 1
    crm_calls = world.crm.calls()

    for call_id, placed_call in placed.items():
        line = truth.get(call_id)
        if line is None:
            problems.append(f"{call_id}: the simulator has no record")
            continue
        if not line["reported"] or _inside_blind_window(line, world.blind_windows):
            figures.calls_unreported += 1
            continue
        figures.calls_checked += 1
        rows = records.get(call_id, [])
        if not rows:
            figures.calls_lost += 1
            problems.append(f"{call_id}: no call record")
            continue
        if len(rows) > 1:
            figures.duplicated_records += 1
            problems.append(f"{call_id}: {len(rows)} call records")
        call = rows[0]
        answered = "talking" in line["history"]
        expected = {"state": "ended", "answered": answered, "direction": "in" if line["incoming"] else "out",
                    "agent": seats[line["terminalId"]].agent_id}
        actual = {"state": call.state, "answered": call.answered_at is not None, "direction": call.direction,
                  "agent": call.agent_id}
        if actual != expected:
            figures.wrong_final_state += 1
            problems.append(f"{call_id} (call {call.pk}): {actual} != {expected}")
        external_id = f"ctihub-{call.pk}"
        types = collections.Counter(events.get(external_id, []))
        start = "in" if line["incoming"] else "out"
        for kind in (start, "hangup"):
            if types[kind] > 1:
                figures.duplicated_events += 1
                problems.append(f"{call_id}: {types[kind]} {kind!r} events at retailCRM")
            elif types[kind] == 0:
                figures.missing_events += 1
                problems.append(f"{call_id}: no {kind!r} event at retailCRM ({_sync_story(call)})")
        if uploaded[external_id] > 1:
            figures.duplicated_uploads += 1
            problems.append(f"{call_id}: uploaded {uploaded[external_id]} times")
        elif external_id not in crm_calls:
            figures.calls_lost += 1
            problems.append(f"{call_id}: never uploaded to retailCRM")
    if consoles is not None:
        figures.stale_consoles = _stale_console_cards(consoles, problems)
        figures.snapshots_late = consoles.snapshots_late
    return figures


def _sync_story(call) -> str:
    """What ctihub's records say of the call's CRM sync: enough to tell why an event is missing."""
    from crm_sync.models import CrmCallSync

    fields = ("in_event_sent_at", "hangup_event_sent_at", "events_in_flight", "events_skipped", "events_attempts",
              "events_next_at", "outbox_at", "uploaded_at", "last_error")
    rows = list(CrmCallSync.objects.filter(call_id=call.pk).values(*fields))
    return (f"call {call.pk} {call.crm_sync_state}, created {call.created_at:%H:%M:%S.%f}, "
            f"ended {call.ended_at and f'{call.ended_at:%H:%M:%S.%f}'}, updated {call.updated_at:%H:%M:%S.%f}, "
            f"sync rows {rows}")


def _inside_blind_window(line: dict, windows: list[tuple[int, int]]) -> bool:
    ended = line.get("endedMs")
    return ended is not None and any(start <= line["createdMs"] and ended <= end for start, end in windows)


def _stale_console_cards(consoles: Consoles, problems: list[str]) -> int:
    """Cards a console shows differently from the database, and snapshot cards it does not show at all."""
    from accounts.models import Agent
    from telephony import console
    from telephony.models import Call

    stale = 0
    for view in consoles.views:
        if not view.connected:
            stale += 1
            problems.append(f"{view.seat.username}: console not connected (closes: {dict(consoles.close_codes)})")
            continue
        agent = Agent.objects.select_related("user").get(pk=view.seat.agent_id)
        expected = {card["id"]: card for card in console.snapshot(console.Viewer(agent.user, agent))["calls"]}
        shown = dict(view.cards)
        versions = dict(Call.objects.filter(pk__in=list(shown)).values_list("pk", "version"))
        for call_id, card in expected.items():
            if call_id not in shown:
                stale += 1
                problems.append(f"{view.seat.username}: call {call_id} ({card['state']}) missing from the console")
        for call_id, card in shown.items():
            if versions.get(call_id) != card["version"]:
                stale += 1
                problems.append(f"{view.seat.username}: call {call_id} shown at v{card['version']} ({card['state']}),"
                                f" database v{versions.get(call_id)}; it got {view.seen[call_id]}")
    return stale
