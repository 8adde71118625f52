"""Benchmark 1: pop-up latency, from the simulated PBX sending a frame to the agent's socket getting the card.

    .venv/bin/python -m bench.popup_latency [--agents 1000] [--terminals 100] [--rate 100] [--seconds 20]
    .venv/bin/python -m bench.popup_latency --sweep [50,100,200,300,400,600] [--seconds 10]
    .venv/bin/python -m bench.popup_latency --storm [--agents 1000] [--web-processes 1]
    .venv/bin/python -m bench.popup_latency --keepalive [--agents 1000] [--seconds 20]

Real parts: the simulator (myCrm, one socket per terminal), one Celery worker
holding those sockets, daphne (``--web-processes`` processes on one port, by default
``settings.WEB_PROCESSES`` as deployed: one per core; its CPU is theirs together), PostgreSQL and Redis. ``--agents`` authenticated
console websockets are connected, all at once (the first ``--terminals`` of them own a
terminal): the connect storm's figures (connect to snapshot p50/p99/max, refused, errors
by kind) come first; ``--storm`` stops there. The load is ``--rate`` PBX events per second
across the terminals: each call rings, is answered and hangs up (one frame each); when
the time is up the calls under way are finished at the same pace. By default
(``--driver script``) the simulator plays the moves itself from a script sent half a second
ahead, and a frame is timed from when its move was due: a move played late counts late.
With ``--driver requests`` each move is a control request, and a frame's send time is taken
just before it, so the figure also holds that request's round trip; the requests cost the two
measured cores about 1 ms of CPU an event more (docs/performance.md, 2026-12-07 midday).
Each step also splits the latency by the simulator's frame log (``latency_split``): from the
move (due, or requested) to the frame leaving the simulator (the harness), and from there to the card on
its socket (worker, Redis, daphne). Lost: an expected card that never reached its agent; duplicated: the same card version
reaching the same socket twice. ctihub's processes run with ``CARD_TRACE`` (ctihub/lib/card_trace.py): each card carries
the times it passed each stage, so ``stage_split`` splits frame-to-socket by stage (p50 / p99 / max),
``slow_cards_by_stage`` names where each card over 60 ms waited longest, ``slow_card`` shows the slowest whole, and
``pauses`` lists the garbage collections and console resyncs of 5 ms or more that held daphne or the worker,
``slow_cards_during_a_pause`` how many late cards were in flight during one ("lag": a thread of the process woke
5 ms or more late; "loop_lag": daphne's event loop; "publish_write": the worker's write of the cards to Redis). Each
step also samples the whole machine every 50 ms (``machine``: cores busy, the share of the time a task waited for a
core or for I/O, from /proc/stat and /proc/pressure) and counts the late cards that were in flight while it was
saturated (``slow_cards_and_the_machine``): on two shared cores that, not ctihub, is often what made them late.

The sockets live in ``--clients`` processes of their own (``bench/popup_clients.py``; by
default one per 500 sockets), so the load generator is not what saturates. Each step prints
every process's CPU per event (worker, daphne, simulator, load generator: this process and
its clients), so a saturation says which one ran out.

The floor (not with ``--sweep``): the consoles closed, as many sockets open on
``bench/floor_consumer.py`` (a consumer that joins a group and forwards what comes, served
on the same daphne because the benchmark sets ``BENCH_FLOORS``), and as many cards of the
same size as the consoles received are sent to their groups with ``group_send`` at the same
rate. daphne's CPU per card delivered, console and floor, and their ratio are printed.

``--keepalive``: after the storm, daphne's CPU over ``--seconds`` with every console idle, then over as
long with each sending console.js's keep-alive ping every 3 s (its pong's round trip too); the difference is
the keep-alive's cost, per ping and as a share of a core. ``--keepalive-storm N`` keeps N of the
``--agents`` out of the first storm and connects them all at once while the others ping: the pongs' round
trips then, and how many came later than the page waits (it would drop a healthy socket).

``--sweep``: steps of ``--seconds`` at each rate, up to the first past saturation (p99 over 1 s
or a card lost); ``popup_saturation_rate`` is the highest rate whose p99 stayed <= 60 ms with
no card lost or duplicated. ``--workers N`` starts N Celery workers to share the terminals' sockets: each holds at most
``ceil(terminals / N)`` (``LISTENER_MAX_PER_WORKER``), so they split; ``listeners_per_worker`` shows it.
The worker figures are the workers' sum (``cpu_busy`` over 100% is more than one core).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import multiprocessing
import os
import time

from bench.common import figure, no_pauses_of_our_own, percentiles, progress, setup_django

STATES = ("ringing", "talking", "ended")
# The simulator's move that brings a call to each state (its control API's and its script's names).
MOVE_OF_STATE = {"ringing": "incoming", "talking": "answer", "ended": "hangup"}
P99_LIMIT_MS = 60.0
SATURATED_P99_MS = 1000.0  # a step this late is past saturation; one over 60 ms may be a busy machine's
STORM_LIMIT_S = 10.0
SOCKETS_PER_CLIENT = 500
DEFAULT_SWEEP = "50,100,200,300,400,600"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--terminals", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=0, help="load generator processes (default: one per 500 sockets)")
    parser.add_argument("--sweep", nargs="?", const=DEFAULT_SWEEP, default=None,
                        help=f"comma-separated event rates (default {DEFAULT_SWEEP})")
    parser.add_argument("--storm", action="store_true", help="only the connect storm: every console at once")
    parser.add_argument("--keepalive", action="store_true",
                        help="after the storm, daphne's CPU for the consoles' keep-alive pings, then stop")
    parser.add_argument("--keepalive-storm", type=int, default=0,
                        help="with --keepalive: consoles kept out of the first storm, connected at once while the "
                             "others ping")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--driver", choices=("script", "requests"), default="script",
                        help="script: the simulator plays each step's call moves at their times from a script sent "
                             "ahead a chunk at a time (a PBX making its own calls); requests: one control request a "
                             "move, as before (~1.4 ms of the harness's CPU an event on the measured cores)")
    parser.add_argument("--workers", type=int, default=1, help="Celery workers holding the terminals' sockets")
    parser.add_argument("--web-processes", type=int, default=0,
                        help="daphne processes on the one port (WEB_PROCESSES; default: settings.WEB_PROCESSES, "
                             "as deployed: one per core)")
    args = parser.parse_args()
    args.terminals = min(args.terminals, args.agents)  # each terminal has its own agent
    args.clients = args.clients or max(1, math.ceil(args.agents / SOCKETS_PER_CLIENT))
    setup_django()
    from django.conf import settings

    from bench.procs import BenchHub, hub_env, wait_until_every_web_process_accepts

    args.web_processes = args.web_processes or settings.WEB_PROCESSES
    from tests.support.processes import wait_for

    extra = {}
    if args.workers > 1:
        # Each worker takes free listeners up to its cap, so the terminals split across the workers: without it
        # the first worker to scan leases them all and the others hold nothing (issue 19 is the fair share).
        extra["LISTENER_MAX_PER_WORKER"] = str(math.ceil(args.terminals / args.workers))
    # CARD_TRACE: each card carries its stage times to the socket (ctihub/lib/card_trace.py), for the breakdown.
    hub = BenchHub(hub_env(LISTENER_SCAN_SECONDS="1", BENCH_FLOORS="true", CARD_TRACE="true",
                           WEB_PROCESSES=str(args.web_processes), **extra))
    clients = None
    try:
        hub.start_simulator()
        terminals = _world(hub, args)
        hub.web = hub.start_web()
        wait_until_every_web_process_accepts(hub.web, hub.web_url, args.web_processes)
        figure("web_processes", args.web_processes)
        hub.workers = [hub.start_worker() for _ in range(args.workers)]
        from telephony.models import Listener

        if not (args.storm or args.keepalive):
            wait_for(lambda: Listener.objects.filter(state="connected").count() >= args.terminals, 120,
                     interval=0.5, what="every terminal's listener connected")
        figure("listeners_per_worker", ", ".join(str(n) for n in _listeners_per_worker()))
        cookies = _sessions(args.agents)
        clients = Clients(args.clients)
        with no_pauses_of_our_own():
            asyncio.run(_run(hub, args, terminals, cookies, clients))
    finally:
        if clients is not None:
            clients.stop()
        hub.stop()


# --- the world -----------------------------------------------------------------------------


def _world(hub, args) -> list[tuple[str, int]]:
    """A myCrm user with ``terminals`` terminals at the simulator and in ctihub, each with its agent."""
    from django.contrib.auth import get_user_model

    from accounts.models import Agent
    from telephony import control
    from telephony.models import PbxAccount, Terminal
    from tests.support.sim_control import IstraControl

    sim = IstraControl(hub.sim_url)
    sim.add_user("bench", "bench-pass", mycrm=True)
    ids = [str(5985841581756135000 + t) for t in range(args.terminals)]
    for t, pbx_id in enumerate(ids):
        sim.add_extension(pbx_id, str(1000 + t), owner="bench")
    account = PbxAccount.objects.create(name="bench", kind=PbxAccount.Kind.ISTRA_MYCRM,
                                        base_url=f"{hub.sim_url}/restletrouter", login="bench", password="bench-pass")
    control.sync_terminals(account)
    User = get_user_model()
    User.objects.bulk_create(User(username=f"agent{n}") for n in range(args.agents))
    users = {u.username: u for u in User.objects.filter(username__startswith="agent")}
    Agent.objects.bulk_create(Agent(user=users[f"agent{n}"], extension_code=str(1000 + n)) for n in range(args.agents))
    agents = {a.user.username: a for a in Agent.objects.select_related("user")}
    out = []
    for t, pbx_id in enumerate(ids):
        agent = agents[f"agent{t}"]
        Terminal.objects.filter(account=account, pbx_id=pbx_id).update(agent=agent)
        out.append((pbx_id, agent.pk))
    return out


def _listeners_per_worker() -> list[int]:
    """How many listeners each lease owner holds (telephony.sockets.leases), most first."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter("ctihub:lease:listener:*", count=1000))
    owners = collections.Counter(client.mget(keys)) if keys else collections.Counter()
    client.close()
    return sorted(owners.values(), reverse=True)


def _sessions(count: int) -> list[str]:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    cookies = []
    for user in get_user_model().objects.filter(username__startswith="agent").order_by("id")[:count]:
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        cookies.append(f"{settings.SESSION_COOKIE_NAME}={store.session_key}")
    return cookies


# --- the load generator's processes ---------------------------------------------------------


class Clients:
    def __init__(self, count: int):
        from bench.popup_clients import client_main

        context = multiprocessing.get_context("spawn")  # nothing of this process's Django or its connections
        self.pipes, self.processes = [], []
        for _ in range(count):
            mine, theirs = context.Pipe()
            process = context.Process(target=client_main, args=(theirs,), daemon=True)
            process.start()
            self.pipes.append(mine)
            self.processes.append(process)

    async def ask(self, commands: list[tuple]) -> list:
        for pipe, command in zip(self.pipes, commands):
            pipe.send(command)
        return await asyncio.gather(*(asyncio.to_thread(pipe.recv) for pipe in self.pipes))

    async def ask_all(self, command: tuple) -> list:
        return await self.ask([command] * len(self.pipes))

    async def connect(self, targets: list[tuple[str, dict]], timeout: float):
        """Each socket's connect-to-snapshot time, the errors by kind, and the targets that failed."""
        shares = [targets[i::len(self.pipes)] for i in range(len(self.pipes))]
        answers = await self.ask([("connect", share, timeout) for share in shares])
        connected_ms, errors, failed = [], collections.Counter(), []
        for ms, errs, failed_here in answers:
            connected_ms += ms
            errors.update(errs)
            failed += failed_here
        return connected_ms, errors, failed

    async def count(self) -> int:
        return sum(await self.ask_all(("count",)))

    async def collect(self):
        received, duplicates, count, sample, traces = {}, 0, 0, None, {}
        for got, dups, n, one, traced in await self.ask_all(("collect",)):
            for key, at in got.items():
                if at < received.get(key, at + 1):
                    received[key] = at
                    if key in traced:
                        traces[key] = traced[key]
            duplicates += dups
            count += n
            sample = sample or one
        return received, duplicates, count, sample, traces

    async def close(self) -> None:
        await self.ask_all(("close",))
        for process in self.processes:
            process.join(5)
        self.processes = []

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join(5)
        self.processes = []

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]


# --- CPU per process ------------------------------------------------------------------------


class CpuMeter:
    """User + system CPU seconds of each of the benchmark's processes (and their children) between two reads."""

    def __init__(self, hub, clients: Clients):
        import psutil

        self.groups = {
            "worker": [psutil.Process(worker.process.pid) for worker in hub.workers],
            "daphne": [psutil.Process(hub.web.process.pid)],
            "simulator": [psutil.Process(hub.processes[0].process.pid)],
            "load_generator": [psutil.Process(os.getpid())] + [psutil.Process(pid) for pid in clients.pids()],
            "driver": [psutil.Process(os.getpid())],  # of load_generator: the control requests, not the sockets
        }
        from django.conf import settings

        self.database = settings.DATABASES["default"]["NAME"]
        self._backends: dict[tuple, float] = {}  # (pid, start) -> its CPU when last seen (an ended one keeps it)
        self._processes: dict[tuple, object] = {}
        self._listed_at = 0.0

    def _postgres(self) -> float:
        """The CPU of PostgreSQL's backends serving the benchmark's database (their title names it): on a
        machine shared with others, the server's own total would count their work too."""
        import psutil

        if time.monotonic() - self._listed_at > 1.0:  # the process list at most once a second: it costs this process
            self._listed_at = time.monotonic()
            for process in psutil.process_iter(["name", "cmdline"]):
                title = " ".join(process.info["cmdline"] or [])
                if process.info["name"] in ("postgres", "postmaster") and f" {self.database} " in f"{title} ":
                    self._processes.setdefault((process.pid, process.create_time()), process)
        for key, process in list(self._processes.items()):
            try:
                self._backends[key] = sum(process.cpu_times()[:2])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                del self._processes[key]
        return sum(self._backends.values())

    def read(self) -> dict[str, float]:
        import psutil

        out = {}
        for name, roots in self.groups.items():
            total = 0.0
            for root in roots:
                try:
                    family = [root, *root.children(recursive=True)] if name not in ("load_generator", "driver") else [root]
                    total += sum(sum(p.cpu_times()[:2]) for p in family)
                except psutil.NoSuchProcess:
                    pass
            out[name] = total
        out["postgres"] = self._postgres()
        return out


def _redis_connections(hub) -> int:
    """daphne's open connections to Redis: the channel layer's pool after the storm."""
    from urllib.parse import urlparse

    import psutil
    from django.conf import settings

    port = urlparse(settings.REDIS_URL).port or 6379
    root = psutil.Process(hub.web.process.pid)
    return sum(1 for process in [root, *root.children(recursive=True)] for c in process.net_connections("tcp")
               if c.raddr and c.raddr.port == port)


def _cpu_per(before: dict, after: dict, units: int) -> dict[str, float]:
    return {name: (after[name] - before[name]) * 1000 / max(1, units) for name in before}


class Machine:
    """The whole machine every ``INTERVAL`` seconds, from a thread of this process: how busy its cores were
    (/proc/stat) and how long runnable tasks waited for a core or for I/O (Linux's pressure stall
    information, /proc/pressure/{cpu,io}: the share of the time at least one task waited). A late card
    whose way overlapped windows of the machine saturated, or tasks waiting for a core, was late for the
    machine's sake; GIL waits do not show here (a thread waiting for the GIL sleeps)."""

    INTERVAL = 0.05

    def __init__(self):
        import threading

        self.samples: list[tuple[float, float, float, float, float]] = []  # wall, busy, total, cpu_some, io_some
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="machine-sampler", daemon=True)
        self._thread.start()

    @staticmethod
    def _read() -> tuple[float, float, float, float, float]:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        total = sum(fields[:8])

        def some(path: str) -> float:
            try:
                with open(path) as f:
                    return float(f.readline().rsplit("total=", 1)[1])
            except (OSError, IndexError, ValueError):
                return 0.0

        return time.time(), total - idle, total, some("/proc/pressure/cpu"), some("/proc/pressure/io")

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self.samples.append(self._read())

    def stop(self) -> None:
        self._stop.set()

    def windows(self, start: float, end: float) -> list[tuple[float, float, float, float, float]]:
        """(from, to, busy share of all cores, CPU pressure share, I/O pressure share) of each interval."""
        out = []
        samples = [s for s in self.samples if start - self.INTERVAL <= s[0] <= end + self.INTERVAL]
        for (t0, b0, n0, c0, i0), (t1, b1, n1, c1, i1) in zip(samples, samples[1:]):
            span = max(1e-6, t1 - t0)
            out.append((t0, t1, (b1 - b0) / max(1.0, n1 - n0), (c1 - c0) / 1e6 / span, (i1 - i0) / 1e6 / span))
        return out


# --- the run --------------------------------------------------------------------------------


async def _run(hub, args, terminals, cookies, clients: Clients) -> None:
    ws_url = hub.web_url.replace("http", "ws") + "/ws/console/"
    targets = [(ws_url, {"Cookie": cookie, "Origin": hub.web_url}) for cookie in cookies]
    held_back = targets[len(targets) - args.keepalive_storm:] if args.keepalive and args.keepalive_storm else []
    targets, cookies = targets[:len(targets) - len(held_back)], cookies[:len(targets) - len(held_back)]
    progress.update(consoles_wanted=len(cookies))
    meter = CpuMeter(hub, clients)
    machine = Machine()
    cpu_before, started = meter.read(), time.monotonic()
    connected_ms, errors, failed = await clients.connect(targets, timeout=60)
    cpu_after = meter.read()
    progress.update(consoles_connected=len(connected_ms), snapshots_received=len(connected_ms), errors=dict(errors))
    figure("storm_consoles", len(cookies))
    figure("storm_seconds_to_all_snapshots", time.monotonic() - started, "s", f"<= {STORM_LIMIT_S:.0f}")
    percentiles(connected_ms, "storm_connect_to_snapshot")
    refused = sum(n for kind, n in errors.items() if kind.startswith(("refused", "closed")))
    figure("storm_refused", refused, "", "0")
    figure("storm_errors", sum(errors.values()), "", "0")
    figure("storm_errors_by_kind", ", ".join(f"{k}={v}" for k, v in sorted(errors.items())) or "none")
    figure("storm_cpu_per_console", ", ".join(f"{name} {ms:.2f}" for name, ms in
                                              _cpu_per(cpu_before, cpu_after, len(cookies)).items()
                                              if name != "driver"),
           "ms (process CPU / consoles)")
    figure("storm_daphne_redis_connections", _redis_connections(hub))
    if args.storm and failed:
        raise RuntimeError(f"{len(failed)} of {len(cookies)} consoles got no snapshot")
    if args.storm:
        return
    # The latency run needs every console: those the storm refused try again, as the page does.
    for _attempt in range(3):
        if not failed:
            break
        await asyncio.sleep(1)
        again_ms, again_errors, failed = await clients.connect(failed, timeout=60)
        connected_ms += again_ms
        figure("storm_reconnected", f"{len(again_ms)} ({', '.join(f'{k}={v}' for k, v in again_errors.items()) or 'no errors'})")
    progress.update(consoles_connected=len(connected_ms), snapshots_received=len(connected_ms))
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(cookies)} consoles got no snapshot")
    figure("agents_connected", len(connected_ms))
    figure("load_generator_processes", len(clients.pids()))
    if args.keepalive:
        await _keepalive(args, clients, meter, held_back)
        return
    calls = _Calls(terminals)
    async with _Control(hub.sim_url) as session:
        await session.post("/_sim/istra/frame-log", b'{"enabled": true}')  # when each frame left: the split
        if args.sweep is None:
            step = await _step(session, hub, args, clients, meter, calls, args.rate, label="", machine=machine)
            if not args.no_floor:
                await _floor(hub, args, clients, meter, step)
            return
        held = 0
        for rate in [float(r) for r in args.sweep.split(",") if r.strip()]:
            step = await _step(session, hub, args, clients, meter, calls, rate, label=f"sweep_{rate:g}_", machine=machine)
            if step["p99"] <= P99_LIMIT_MS and not step["lost"] and not step["duplicated"]:
                held = max(held, rate)
            figure(f"sweep_{rate:g}_held", "yes" if held == rate else "no", "", f"p99 <= {P99_LIMIT_MS:.0f} ms, 0 lost")
            if step["p99"] > SATURATED_P99_MS or step["lost"]:
                break  # saturated: the next steps would only queue more (their CPU per event is printed above)
        figure("popup_saturation_rate", held, "events/s", ">= 300 at p99 <= 60 ms, 1,000 consoles")


KEEPALIVE_EVERY_S = 3.0  # console.js: KEEP_ALIVE.pingEveryMs
KEEPALIVE_WAIT_MS = 4000  # console.js: KEEP_ALIVE.pongWithinMs


async def _keepalive(args, clients: Clients, meter: CpuMeter, held_back: list) -> None:
    """daphne's CPU with every console idle, then with each pinging every KEEPALIVE_EVERY_S as the page does:
    the difference, per ping and as a share of a core for these consoles."""
    idle_before = meter.read()
    await asyncio.sleep(args.seconds)
    idle_after = meter.read()
    await clients.ask_all(("ping_start", KEEPALIVE_EVERY_S))
    await asyncio.sleep(args.seconds)
    answers = await clients.ask_all(("ping_stop",))
    ping_after = meter.read()
    sent = sum(a[0] for a in answers)
    pong_ms = [ms for a in answers for ms in a[2]]
    idle_s = idle_after["daphne"] - idle_before["daphne"]
    # The pinging window: the clients' seconds and their wait for the last pongs (min(every, 2) s).
    window = args.seconds + min(KEEPALIVE_EVERY_S, 2.0)
    ping_s = ping_after["daphne"] - idle_after["daphne"]
    extra_s = ping_s - idle_s * window / args.seconds
    figure("keepalive_consoles", args.agents - len(held_back))
    figure("keepalive_pings_sent", sent)
    figure("keepalive_pongs_received", sum(a[1] for a in answers), "", "= pings sent")
    percentiles(pong_ms, "keepalive_pong")
    figure("keepalive_daphne_cpu_idle", idle_s * 1000 / args.seconds, "ms per s")
    figure("keepalive_daphne_cpu_pinging", ping_s * 1000 / window, "ms per s")
    figure("keepalive_daphne_cpu_per_ping", extra_s * 1000 / max(1, sent), "ms")
    figure("keepalive_daphne_core_share", extra_s / window * 100, "%",
           f"of one core, {args.agents - len(held_back)} consoles pinging every {KEEPALIVE_EVERY_S:g} s")
    if not held_back:
        return
    # The pongs while other consoles storm in (a deploy, the other process's consoles moving over): one
    # later than the page waits (4 s) would make it drop a healthy socket and reconnect, adding to the storm.
    await clients.ask_all(("ping_start", KEEPALIVE_EVERY_S))
    started = time.monotonic()
    connected_ms, errors, failed = await clients.connect(held_back, timeout=60)
    figure("keepalive_storm_consoles", f"{len(held_back)} ({len(connected_ms)} with their snapshot, "
           f"{time.monotonic() - started:.1f} s)")
    await asyncio.sleep(KEEPALIVE_EVERY_S)
    answers = await clients.ask_all(("ping_stop",))
    sent, pong_ms = sum(a[0] for a in answers), [ms for a in answers for ms in a[2]]
    figure("keepalive_storm_pings_sent", sent)
    figure("keepalive_storm_pongs_received", len(pong_ms), "", "= pings sent")
    percentiles(pong_ms, "keepalive_storm_pong")
    figure("keepalive_storm_pongs_later_than_the_page_waits", sum(ms > KEEPALIVE_WAIT_MS for ms in pong_ms), "",
           "0")


EVENT_STATES = {"callRinging": "ringing", "callTalking": "talking", "callDropped": "ended"}


# A card's way, stage by stage (ctihub/lib/card_trace.py): the name of each stage, and the two stamps around it
# ("frame": the simulator's frame log, "client": the socket's arrival).
STAGES = (
    ("pbx_socket", "frame", "received"),  # the simulator's write to the worker's listener reading the frame
    ("transaction", "received", "handed"),  # parse, a database thread, the transaction and its commit, the card
    ("publisher_queue", "handed", "taken"),  # waiting for the worker's publisher thread
    ("members_read", "taken", "pushed"),  # the publisher's first Redis round trip (the groups' members)
    ("redis_to_daphne", "pushed", "fetched"),  # the push, and daphne's channel layer taking it off Redis
    ("daphne_loop", "fetched", "sent"),  # daphne's event loop: the consumer's turn, the card's JSON
    ("websocket", "sent", "client"),  # Twisted's write, the kernel, the load generator's socket process
)
SLOW_MS = P99_LIMIT_MS
PAUSE_MIN_MS = 5.0  # ctihub.lib.card_trace.PAUSE_MIN_SECONDS


async def _split(session, sent: dict, received: dict, label: str, traces: dict | None = None,
                 started_at: float | None = None, machine: Machine | None = None) -> None:
    """Where the time went: from the control request to the frame leaving the simulator (the harness's
    part), and from the frame leaving to the card reaching its socket (ctihub's: worker, Redis, daphne),
    by the simulator's frame log. The frames of this step are read and then forgotten.

    With the cards' stage times (``traces``: the benchmark's processes run with ``CARD_TRACE``), ctihub's
    part is split by stage (``stage_split``: p50 / p99 / max of each), and each card slower than
    ``SLOW_MS`` from frame to socket is counted under the stage where it waited longest (``slow_cards_by_stage``);
    the slowest few are printed whole, with when they left (seconds into the step), so a stall can be
    matched with what else happened then."""
    frames = json.loads(await session.get("/_sim/istra/frame-log"))
    await session.post("/_sim/istra/frame-log", b'{"enabled": false}')  # forgets them
    await session.post("/_sim/istra/frame-log", b'{"enabled": true}')
    left = {}
    for entry in frames:
        for item in entry["frame"].get("item", []):
            state = EVENT_STATES.get(item.get("event"))
            if state:
                left.setdefault((item.get("displayNumber"), state), entry["time"])
    before, after = [], []
    for key, at in sent.items():
        if key in left and key in received:
            before.append((left[key] - at) * 1000)
            after.append((received[key] - left[key]) * 1000)
    if not before:
        return
    before.sort()
    after.sort()
    figure(f"{label}latency_split", f"request_to_frame p50 {_q(before, .5):.1f} p99 {_q(before, .99):.1f}, "
                                    f"frame_to_card p50 {_q(after, .5):.1f} p99 {_q(after, .99):.1f}",
           f"ms ({len(before)} frames timed)")
    if traces:
        _stage_split(left, received, traces, label, started_at, _pauses(), machine)


def _pauses() -> list[tuple[str, float, float, float]]:
    """What paused ctihub's processes since the last read (ctihub/lib/card_trace.py): ("<process>-<kind>", start,
    seconds, CPU seconds), a kind being a garbage collection ("gc2": of generation 2) or what the process noted."""
    import redis
    from django.conf import settings

    from ctihub.lib.card_trace import PAUSES_KEY

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        pipe = client.pipeline()
        pipe.lrange(PAUSES_KEY, 0, -1)
        pipe.delete(PAUSES_KEY)
        raw = pipe.execute()[0]
    finally:
        client.close()
    out = []
    for line in raw:
        process, kind, start, seconds, cpu = line.decode().split()
        out.append((f"{process}-{kind}", float(start), float(seconds), float(cpu)))
    return out


def _q(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _stage_split(left: dict, received: dict, traces: dict, label: str, started_at: float | None,
                 pauses: list[tuple[str, float, float, float]] = (), machine: Machine | None = None) -> None:
    by_stage: dict[str, list[float]] = {name: [] for name, _a, _b in STAGES}
    slow_by_stage: collections.Counter = collections.Counter()
    slow: list[tuple[float, tuple, dict]] = []
    timed = 0
    for key, trace in traces.items():
        if key not in left or key not in received:
            continue
        stamps = dict(trace, frame=left[key])
        if any(stamps.get(a) is None or stamps.get(b) is None for _name, a, b in STAGES):
            continue
        timed += 1
        parts = {name: (stamps[b] - stamps[a]) * 1000 for name, a, b in STAGES}
        for name, ms in parts.items():
            by_stage[name].append(ms)
        total = (stamps["client"] - stamps["frame"]) * 1000
        if total > SLOW_MS:
            slow_by_stage[max(parts, key=parts.get)] += 1
            slow.append((total, key, dict(parts, frame_at=stamps["frame"])))
    if not timed:
        return
    figure(f"{label}stage_split", "; ".join(
        f"{name} {_q(sorted(v), .5):.1f} / {_q(sorted(v), .99):.1f} / {max(v):.0f}" for name, v in by_stage.items()),
        f"ms p50 / p99 / max ({timed} cards)")
    figure(f"{label}slow_cards_by_stage", ", ".join(f"{name} {n}" for name, n in slow_by_stage.most_common()) or "none",
           f"(cards over {SLOW_MS:.0f} ms from frame to socket, by the stage they waited longest in)")
    if pauses or slow:
        step_start = started_at or 0.0
        by_process: dict[str, list[tuple[float, float]]] = {}
        for process, start, seconds, cpu in pauses:
            if start >= step_start:
                by_process.setdefault(process, []).append((seconds * 1000, cpu * 1000))
        figure(f"{label}pauses", ", ".join(
            f"{process} {len(v)} (max {max(w for w, _c in v):.0f}, total {sum(w for w, _c in v):.0f} ms; "
            f"CPU max {max(c for _w, c in v):.0f})" for process, v in sorted(by_process.items()))
            or "none", f"(ctihub's processes' collections and resyncs of {PAUSE_MIN_MS:.0f} ms or more in the step; "
                       "CPU: the pausing thread's own)")
        during = collections.Counter()
        for total, _key, parts in slow:
            begin, end = parts["frame_at"], parts["frame_at"] + total / 1000
            hit = {process for process, start, seconds, _cpu in pauses if start < end and start + seconds > begin}
            during.update(hit or {"no pause"})
        if slow and machine is not None:
            contended = collections.Counter()
            for total, _key, parts in slow:
                begin, end = parts["frame_at"], parts["frame_at"] + total / 1000
                windows = [w for w in machine.windows(begin, end) if w[0] < end and w[1] > begin]
                if any(w[2] >= 0.95 for w in windows):
                    contended["machine saturated"] += 1
                elif any(w[3] >= 0.5 for w in windows):
                    contended["tasks waiting for a core"] += 1
                elif any(w[4] >= 0.5 for w in windows):
                    contended["tasks waiting for I/O"] += 1
                else:
                    contended["none of these"] += 1
            figure(f"{label}slow_cards_and_the_machine", ", ".join(f"{k} {n}" for k, n in contended.most_common()),
                   f"(of {len(slow)} cards over the limit: during a {Machine.INTERVAL * 1000:.0f} ms window with the "
                   "cores >= 95% busy, else with a task waiting for a core or for I/O half of it)")
        if slow:
            figure(f"{label}slow_cards_during_a_pause", ", ".join(f"{k} {n}" for k, n in during.most_common()),
                   f"(of {len(slow)} cards over the limit, those whose way overlapped such a pause)")
    slow.sort(key=lambda item: item[0], reverse=True)
    for total, key, parts in slow[:3]:
        at = parts.pop("frame_at") - started_at if started_at is not None else 0.0
        figure(f"{label}slow_card", f"{total:.0f} ms at {at:.2f} s ({key[1]}): " + ", ".join(
            f"{name} {ms:.1f}" for name, ms in parts.items() if ms >= 1.0), "ms")


class _Calls:
    """Each terminal takes one call at a time through ringing, talking and ended."""

    def __init__(self, terminals):
        self.free = collections.deque(terminal_id for terminal_id, _agent in terminals)
        self.under_way: collections.deque = collections.deque()  # (number, next state index, terminal)
        self.n = 0


async def _step(session, hub, args, clients, meter, calls: _Calls, rate: float, label: str,
                machine: Machine | None = None) -> dict:
    cpu_before, t0, wall_t0 = meter.read(), time.monotonic(), time.time()
    traffic = _scripted_traffic if args.driver == "script" else _traffic
    sent = await traffic(session, hub.sim_url, args.seconds, rate, calls)
    progress.update(frames_sent=progress.get("frames_sent", 0) + len(sent))
    cpu_after, until = await _last_cards(clients, meter, len(sent))
    elapsed = until - t0
    received, duplicates, delivered, sample, traces = await clients.collect()
    progress.update(cards_received=progress.get("cards_received", 0) + delivered)
    latencies, lost, superseded = [], [], []
    for key, at in sent.items():
        if key in received:
            latencies.append((received[key] - at) * 1000)
        elif any((key[0], later) in received for later in STATES[STATES.index(key[1]) + 1:]):
            # Its call's next card reached the socket first, and the console (as the page would) kept the
            # newer one: the agent saw the call as it is, never a stale card. Counted, not as lost.
            superseded.append(key)
        else:
            lost.append(key)
    latencies.sort()
    await _split(session, sent, received, label, traces, wall_t0, machine)
    figure(f"{label}cards_superseded", len(superseded), "(a newer card of the call came first; the page shows that one)")
    for name, keys in (("lost", lost), ("superseded", superseded)):
        if keys:
            figure(f"{label}cards_{name}_examples", ", ".join(f"{n} {state}" for n, state in sorted(keys)[:5]))
    lost = len(lost)
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))] if latencies else float("inf")
    per_event = _cpu_per(cpu_before, cpu_after, len(sent))
    if label:
        p50 = latencies[len(latencies) // 2] if latencies else float("inf")
        figure(f"{label}events", f"{len(sent)} in {elapsed:.1f} s ({len(sent) / args.seconds:.0f}/s asked {rate:g}/s)")
        figure(f"{label}popup_latency", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {latencies[-1] if latencies else 0:.1f} ms")
        figure(f"{label}cards", f"lost {lost}, duplicated {duplicates}")
    else:
        figure("frames_sent", len(sent))
        figure("cards_lost", lost, "", "0")
        figure("cards_duplicated", duplicates, "", "0")
        percentiles(latencies, "popup_latency")
    figure(f"{label}cpu_per_event", ", ".join(f"{name} {ms:.2f}" for name, ms in per_event.items() if name != "driver"),
           "ms (process CPU / events)")
    figure(f"{label}load_generator_cpu_per_event",
           f"driver {per_event['driver']:.2f}, sockets {per_event['load_generator'] - per_event['driver']:.2f}",
           "ms (this process's control requests / the socket processes' cards)")
    per_event.pop("driver")
    figure(f"{label}cpu_busy", ", ".join(f"{name} {(cpu_after[name] - cpu_before[name]) / elapsed * 100:.0f}%"
                                         for name in per_event), "(of one core)")
    if machine is not None:
        windows = machine.windows(wall_t0, wall_t0 + elapsed)
        if windows:
            cores = os.cpu_count() or 1
            busy = sum(w[2] for w in windows) / len(windows) * 100 * cores
            ours = sum(cpu_after[name] - cpu_before[name] for name in per_event) / elapsed * 100
            figure(f"{label}machine", f"busy {busy:.0f}% of {cores * 100}% (the processes above {ours:.0f}%, the rest "
                   f"{max(0.0, busy - ours):.0f}%: Redis, the kernel, other work); a task waiting for a core "
                   f"{sum(w[3] for w in windows) / len(windows) * 100:.0f}% of the time, for I/O "
                   f"{sum(w[4] for w in windows) / len(windows) * 100:.0f}%; saturated (busy >= 95%) in "
                   f"{sum(1 for w in windows if w[2] >= 0.95)} of {len(windows)} windows of "
                   f"{Machine.INTERVAL * 1000:.0f} ms")
    return {"p99": p99, "lost": lost, "duplicated": duplicates, "delivered": delivered, "sample": sample,
            "daphne_ms_per_card": (cpu_after["daphne"] - cpu_before["daphne"]) * 1000 / max(1, delivered),
            "rate": rate, "sockets": len(clients.pids()) and progress.get("consoles_connected", 0)}


async def _last_cards(clients: Clients, meter: CpuMeter, expected: int) -> tuple[dict[str, float], float]:
    """Waits until every card is in (5 s at most), and answers the CPU read when the last one came and
    that time: a lost card must not lengthen the window whose CPU is divided by the cards."""
    deadline = time.monotonic() + 5
    count, at, read_at = -1, meter.read(), time.monotonic()
    while time.monotonic() < deadline:
        now_count = await clients.count()
        if now_count != count:
            count, at, read_at = now_count, meter.read(), time.monotonic()
        if now_count >= expected:
            break
        await asyncio.sleep(0.05)
    return at, read_at


async def _traffic(session, sim_url, seconds: float, rate: float, calls: _Calls) -> dict[tuple[str, str], float]:
    """``_plan``'s moves, each a control request sent when it is due (``--driver requests``), timed from just
    before its request; an answer or hang-up waits for its call's ringing request to have answered its id."""
    base = "/_sim/istra"
    sent: dict[tuple[str, str], float] = {}
    call_ids: dict[str, asyncio.Future] = {}
    loop = asyncio.get_running_loop()

    async def move(number, state, terminal_id):
        if state == "ringing":
            t0 = time.time()
            call_ids[number] = loop.create_future()
            answer = await session.post(f"{base}/calls/incoming", b'{"terminalId": "%s", "from": "%s"}' % (
                terminal_id.encode(), number.encode()))
            call_ids[number].set_result(json.loads(answer)["callId"])
        else:
            call_id = await call_ids[number]
            t0 = time.time()  # after the wait for the ringing request: that wait is the harness's, not the hub's
            await session.post(f"{base}/calls/{call_id}/{MOVE_OF_STATE[state]}", b"{}")
            if state == "ended":
                call_ids.pop(number)
        sent[(number, state)] = t0

    pending = []
    for at, number, state, terminal_id in _plan(seconds, rate, calls, time.time()):
        await asyncio.sleep(max(0.0, at - time.time()))
        pending.append(asyncio.ensure_future(move(number, state, terminal_id)))
    await asyncio.gather(*pending)
    return sent


SCRIPT_AHEAD_S = 0.5  # each chunk of a script is sent this long before its first move is due
SCRIPT_CHUNK_S = 0.5  # and holds this long a stretch of moves


def _plan(seconds: float, rate: float, calls: _Calls, start: float) -> list[tuple[float, str, str, str]]:
    """A step's call moves, worked out ahead: (when due, Unix time; number; state; terminal), in order; both
    drivers play them (``_traffic`` a control request a move, ``_scripted_traffic`` a script).

    ``rate`` moves a second: a call under way moved on before a new one starts two times in three, a new call
    on a free terminal (each terminal's call rings, is answered, hangs up), and after ``seconds`` the calls under
    way finished at the same pace, so every step ends with none."""
    interval, deadline, moves, tick = 1.0 / rate, start + seconds, [], 0
    while True:
        at = start + tick * interval
        tick += 1
        in_time = at < deadline
        if not in_time and not calls.under_way:
            return moves
        if calls.under_way and (not calls.free or calls.n % 3 or not in_time):
            number, index, terminal_id = calls.under_way.popleft()
        elif calls.free and in_time:
            terminal_id, index = calls.free.popleft(), 0
            calls.n += 1
            number = f"+336{calls.n:08d}"
        else:
            calls.n += 1
            continue
        moves.append((at, number, STATES[index], terminal_id))
        if index < 2:
            calls.under_way.append((number, index + 1, terminal_id))
        else:
            calls.free.append(terminal_id)


async def _scripted_traffic(session, sim_url, seconds: float, rate: float,
                            calls: _Calls) -> dict[tuple[str, str], float]:
    """``_traffic`` played by the simulator: the step's moves sent a chunk at a time ahead of when they are due,
    each timed from when it was due (a move the simulator plays late counts late)."""
    base = "/_sim/istra/calls/script"
    moves = _plan(seconds, rate, calls, time.time() + SCRIPT_AHEAD_S)
    sent: dict[tuple[str, str], float] = {}
    first = 0
    while first < len(moves):
        until = moves[first][0] + SCRIPT_CHUNK_S
        last = first
        while last < len(moves) and moves[last][0] < until:
            last += 1
        chunk = []
        for at, number, state, terminal_id in moves[first:last]:
            move = {"at": at, "move": MOVE_OF_STATE[state], "call": number}
            if state == "ringing":
                move.update(terminalId=terminal_id, **{"from": number})
            chunk.append(move)
            sent[(number, state)] = at
        await session.post(base, json.dumps({"moves": chunk}).encode())
        first = last
        if first < len(moves):
            await asyncio.sleep(max(0.0, moves[first][0] - SCRIPT_AHEAD_S - time.time()))
    await asyncio.sleep(max(0.0, moves[-1][0] - time.time()) if moves else 0.0)
    for _ in range(50):  # the last moves are played: their frames are out (or they failed, said below)
        status = json.loads(await session.get(base))
        if not status["pending"]:
            break
        await asyncio.sleep(0.1)
    if status["failed"] or status["pending"]:
        raise RuntimeError(f"the simulator's script: {status['pending']} moves never played, {status['failed']} "
                           f"failed: {status['failures'][:3]}")
    return sent


class _Stale(Exception):
    """A kept-alive connection the server had closed: the request was never read."""


class _Control:
    """The simulator's control API over a few kept-alive HTTP/1.1 connections, a request written and its
    answer read by hand: aiohttp's client cost this process 0.4 ms of CPU a request, as much as the socket
    processes' work on every card (and it is all on one GIL with the traffic's pacing). The simulator
    (aiohttp's server) answers with a Content-Length; a non-2xx answer raises."""

    IDLE_SECONDS = 20.0  # the server keeps an idle connection 75 s: one older than this is not reused

    def __init__(self, url: str):
        from urllib.parse import urlparse

        parts = urlparse(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def __aenter__(self) -> _Control:
        return self

    async def __aexit__(self, *exc) -> None:
        for _reader, writer, _at in self.idle:
            writer.close()
        self.idle = []

    async def get(self, path: str) -> bytes:
        return await self._send(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (path.encode(), self.host.encode(), self.port))

    async def post(self, path: str, body: bytes) -> bytes:
        return await self._send((b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n" % (path.encode(), self.host.encode(), self.port, len(body)))
                                + body)

    async def _send(self, request: bytes) -> bytes:
        while self.idle:
            reader, writer, at = self.idle.pop()
            if time.monotonic() - at > self.IDLE_SECONDS:
                writer.close()
                continue
            try:
                return await self._exchange(reader, writer, request, reused=True)
            except _Stale:
                continue  # closed by the server while idle, not a byte answered: sent again on another
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return await self._exchange(reader, writer, request)

    async def _exchange(self, reader, writer, request: bytes, reused: bool = False) -> bytes:
        writer.write(request)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            writer.close()
            if reused and not getattr(exc, "partial", b""):
                raise _Stale() from exc
            raise
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at < 0:
            writer.close()
            raise RuntimeError(f"simulator answer without a Content-Length: {head[:200]!r}")
        length = int(lower[at + 17:lower.index(b"\r\n", at + 2)])
        body = await reader.readexactly(length)
        if b"\r\nconnection: close" in lower:
            writer.close()
        else:
            self.idle.append((reader, writer, time.monotonic()))
        status = int(head[9:12])
        if not 200 <= status < 300:
            raise RuntimeError(f"simulator answered {status}: {body[:200]!r}")
        return body


async def _floor(hub, args, clients: Clients, meter: CpuMeter, console: dict) -> None:
    """As many sockets on the forwarding consumer, as many cards of the same size at the same rate."""
    from channels.layers import get_channel_layer

    sockets = progress["consoles_connected"]
    await clients.close()  # the consoles gone: the floor's daphne holds only its own sockets
    floor_clients = Clients(len(clients.pipes))
    clients.processes = floor_clients.processes
    clients.pipes = floor_clients.pipes
    base = hub.web_url.replace("http", "ws") + "/ws/bench/floor/"
    targets = [(f"{base}floor-{n}/", {"Origin": hub.web_url}) for n in range(sockets)]
    connected_ms, errors, _failed = await clients.connect(targets, timeout=60)
    if len(connected_ms) < sockets:
        raise RuntimeError(f"floor: {sockets - len(connected_ms)} of {sockets} sockets not connected: {dict(errors)}")
    meter.groups["load_generator"] = meter.groups["load_generator"][:1] + [
        __import__("psutil").Process(pid) for pid in clients.pids()]
    layer = get_channel_layer()
    sample = dict(console["sample"] or {"id": 0, "version": 1, "remote_number": "", "state": "ringing"})
    cards = console["delivered"]
    receivers = max(1, args.terminals)
    interval = 1.0 / console["rate"]
    cpu_before = meter.read()
    next_at = time.monotonic()
    for n in range(cards):
        now = time.monotonic()
        if now < next_at:
            await asyncio.sleep(next_at - now)
        next_at += interval
        card = dict(sample, id=n + 1, version=1, remote_number=f"+337{n:08d}", state=sample.get("state"))
        await layer.group_send(f"floor-{n % receivers}", {"type": "call.card", "card": card})
    cpu_after, _until = await _last_cards(clients, meter, cards)
    _received, duplicates, delivered, _sample, _traces = await clients.collect()
    floor_ms = (cpu_after["daphne"] - cpu_before["daphne"]) * 1000 / max(1, delivered)
    figure("floor_cards", f"{delivered} of {cards} delivered, duplicated {duplicates}, to {sockets} sockets")
    figure("daphne_cpu_per_card_console", console["daphne_ms_per_card"], "ms")
    figure("daphne_cpu_per_card_floor", floor_ms, "ms")
    figure("daphne_cpu_ratio_to_floor", console["daphne_ms_per_card"] / floor_ms if floor_ms else float("inf"), "",
           "<= 1.5")


if __name__ == "__main__":
    from bench.common import run

    run(main)
