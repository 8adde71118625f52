"""Benchmark: PBX listeners shared by several Celery workers, and moved when a worker joins or leaves.

    .venv/bin/python -m bench.scale_out [--workers 2] [--listeners 200] [--rate 4] [--rebalance-timeout 30]

Real parts: the simulator (Istra myCrm, one socket per terminal: ``--listeners`` sockets), ``--workers``
real Celery workers as production runs them (each holds sockets through its listener supervisor),
PostgreSQL and Redis. The first worker starts alone and takes every listener; steady calls start (each
rings, is answered, hangs up: a fixed story, so every call makes the same frames); then the other workers
join one after another, and at the end the first worker stops cleanly (SIGTERM), as a deploy does.

Who holds what is read from the leases in Redis (``telephony.sockets.leases``), every quarter second.
A worker's share is the listeners over the live workers; the hub is balanced once every live worker
holds within 10% of its share and every listener is held. Figures:

- ``share_<n>_workers``: each worker's count (and its percentage of its share) once the joins are done;
- ``rebalance_after_join_<k>`` / ``rebalance_after_leave``: seconds from the worker ready (from its
  SIGTERM for the leave) until balanced, or ``timeout`` with the counts it had then;
- ``unheld_max_*``: the most listeners nobody held during that move (a socket nobody reads);
- ``frames_per_call``: the frames ctihub stored per call before any move (every call's story is the same);
  ``frames_lost`` / ``frames_duplicated``: per call, frames ctihub lacks or stored more than that, over the
  calls placed while listeners moved and over the whole run; ``calls_lost``: calls ctihub never saw.

The scan period is ``--scan`` (2 s; production 5 s): rebalance times compare with it. The lease TTL stays
as configured (``LISTENER_LEASE_TTL_MS``, 15 s).
"""

from __future__ import annotations

import argparse
import collections
import heapq
import os
import random
import signal
import threading
import time

from bench.common import figure, progress, setup_django

TERMINAL_BASE = 5985841581756135000
WITHIN = 0.10  # a worker is balanced within 10% of its share
AFTER_MOVE_SECONDS = 3.0  # calls placed this long after a move settled still count as placed during it


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2, choices=range(1, 5), help="workers at the end of the joins")
    parser.add_argument("--listeners", type=int, default=200, help="PBX sockets (up to 2,000 on a 2-core machine)")
    parser.add_argument("--rate", type=float, default=4.0, help="new calls a second, all the run")
    parser.add_argument("--scan", type=int, default=2, help="LISTENER_SCAN_SECONDS of the workers")
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of calls before the first move")
    parser.add_argument("--rebalance-timeout", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds to wait for the last calls to end")
    parser.add_argument("--trace", action="store_true",
                        help="print, each second of a move, what each worker holds and the handovers open, taken "
                             "and ready (read from Redis)")
    parser.add_argument("--worker-log-level", default="WARNING",
                        help="LOG_LEVEL of the workers (INFO: each supervisor's line a scan about its moves, in "
                             "test-artifacts/bench-scale-<n>-<port>.log)")
    args = parser.parse_args()
    os.environ.update(LISTENER_SCAN_SECONDS=str(args.scan), LISTENER_KEEPALIVE_SECONDS="20")
    setup_django()
    import redis
    from django.conf import settings

    from bench.procs import BenchHub, hub_env
    from telephony.models import Listener

    hub = BenchHub(hub_env(LOG_LEVEL=args.worker_log_level))
    client = redis.Redis.from_url(settings.REDIS_URL)
    workers: list = []
    traffic = None
    try:
        hub.start_simulator()
        terminals = _world(hub, args.listeners)
        figure("listeners", args.listeners)
        figure("scan_period", args.scan, "s")
        figure("lease_ttl", settings.LISTENER_LEASE_TTL_MS / 1000, "s")
        figure("handover_concurrency", getattr(settings, "LISTENER_HANDOVER_CONCURRENCY", "n/a (shared: 8)"))
        started = time.monotonic()
        workers.append(_start_worker(hub, 0))
        _wait(lambda: Listener.objects.filter(state="connected").count() >= args.listeners, 600,
              "every listener connected by the first worker")
        figure("connect_all_seconds", time.monotonic() - started, "s")
        progress["listeners_connected"] = args.listeners

        traffic = Traffic(hub.sim_url, terminals, args.rate)
        traffic.start()
        time.sleep(args.baseline)
        traffic.mark("baseline_end")
        moves: list[tuple[float, float]] = []  # (start, end) monotonic of each move
        for k in range(1, args.workers):
            worker = _start_worker(hub, k)
            workers.append(worker)
            moves.append(_rebalance(f"join_{k + 1}", client, workers, args, hub=hub))
        _share(f"share_{len(workers)}_workers", client, workers, args.listeners)
        if args.workers > 1:
            leaving = workers.pop(0)
            at = time.monotonic()
            leaving.process.send_signal(signal.SIGTERM)  # the worker itself: its warm shutdown hands leases back
            moves.append(_rebalance("leave", client, workers, args, since=at, leaving=leaving, hub=hub))
            _share(f"share_{len(workers)}_workers_after_leave", client, workers, args.listeners)
        else:
            figure("rebalance_after_join", "n/a (one worker)")
            figure("rebalance_after_leave", "n/a (one worker)")
        time.sleep(AFTER_MOVE_SECONDS)
        traffic.stop()
        _report_frames(traffic, moves, args.settle)
    finally:
        if traffic is not None and traffic.is_alive():
            traffic.stop()
        hub.stop()


def _world(hub, count: int) -> list[str]:
    """A myCrm user with ``count`` terminals: one socket each."""
    from telephony import control
    from telephony.models import PbxAccount
    from tests.support.sim_control import IstraControl

    sim = IstraControl(hub.sim_url)
    sim.add_user("bench", "bench-pass", mycrm=True)
    ids = [str(TERMINAL_BASE + t) for t in range(count)]
    for t, pbx_id in enumerate(ids):
        sim.add_extension(pbx_id, str(10000 + t), owner="bench")
    account = PbxAccount.objects.create(name="bench", kind=PbxAccount.Kind.ISTRA_MYCRM, login="bench",
                                        password="bench-pass", base_url=f"{hub.sim_url}/restletrouter")
    control.sync_terminals(account)
    return ids


def _start_worker(hub, n: int):
    from tests.support.processes import celery_worker, wait_ready

    worker = celery_worker(f"bench-scale-{n}-{hub.sim_port}", hub.env)
    hub.processes.append(worker)
    wait_ready(worker, 90)
    worker.number = n
    worker.ready_at = time.monotonic()
    return worker


def _wait(predicate, timeout: float, what: str) -> None:
    from tests.support.processes import wait_for

    wait_for(predicate, timeout, interval=0.25, what=what)


# --- who holds what ------------------------------------------------------------------------------

def lease_owners(client) -> dict[int, str]:
    """Listener id -> its lease holder: ``telephony.sockets.leases.lease_owners`` where it exists."""
    from telephony.sockets import leases

    if hasattr(leases, "lease_owners"):
        return leases.lease_owners(client)
    keys = list(client.scan_iter(match=leases.lease_key("*"), count=1000))
    if not keys:
        return {}
    prefix = leases.lease_key("")
    return {int(key.decode()[len(prefix):]): value.decode()
            for key, value in zip(keys, client.mget(keys)) if value is not None}


def _counts(client, workers) -> tuple[dict[str, int], int]:
    """Listeners held per live worker (by its pid in the owner id, ``host:pid:suffix`` today), and by anyone."""
    owners = lease_owners(client)
    by_pid = {str(worker.process.pid): f"worker_{worker.number}" for worker in workers}
    counts = dict.fromkeys(by_pid.values(), 0)
    for owner in owners.values():
        # Any part of the id that is a worker's pid: the host name and suffix around it may change shape.
        name = next((by_pid[part] for part in owner.split(":") if part in by_pid), f"other:{owner}")
        counts[name] = counts.get(name, 0) + 1
    return counts, len(owners)


def _balanced(counts: dict[str, int], held: int, workers, listeners: int) -> bool:
    share = listeners / len(workers)
    return held == listeners and all(abs(counts.get(f"worker_{w.number}", 0) - share) <= WITHIN * share
                                     for w in workers)


def _cpu_seconds(processes) -> dict[str, float]:
    """User and system CPU seconds so far of each process (and its children: a worker's prefork child)."""
    import psutil

    seconds = {}
    for process in processes:
        try:
            root = psutil.Process(process.process.pid)
            seconds[process.name] = sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            continue
    return seconds


def _rebalance(name: str, client, workers, args, since: float | None = None, leaving=None,
               hub=None) -> tuple[float, float]:
    """Seconds until balanced after a join (from the new worker ready) or a leave (from its SIGTERM)."""
    since = workers[-1].ready_at if since is None else since
    owners_before = lease_owners(client)
    cpu_before = _cpu_seconds(hub.processes) if hub is not None else {}
    deadline = since + args.rebalance_timeout
    unheld_max = 0
    counts, held = _counts(client, workers)
    next_trace = since
    while True:
        counts, held = _counts(client, workers)
        unheld_max = max(unheld_max, args.listeners - held)
        if args.trace and time.monotonic() >= next_trace:
            _trace(name, time.monotonic() - since, client, workers, counts, held, args.listeners)
            next_trace += 1.0
        if _balanced(counts, held, workers, args.listeners) and (leaving is None or not leaving.alive()):
            took = time.monotonic() - since
            figure(f"rebalance_after_{name}", took, "s", f"<= {2 * args.scan} (two scan periods)")
            break
        if time.monotonic() >= deadline:
            figure(f"rebalance_after_{name}", f"timeout (> {args.rebalance_timeout:.0f} s): " + _counts_text(
                counts, held, args.listeners))
            break
        time.sleep(0.25)
    figure(f"unheld_max_{name}", unheld_max)
    if hub is not None:  # what the moves cost each side: logins a second the simulator and a worker can do
        took = time.monotonic() - since
        cpu_after = _cpu_seconds(hub.processes)
        owners_after = lease_owners(client)
        moved = sum(1 for i, owner in owners_after.items() if owners_before.get(i) not in (None, owner))
        spent = {n: cpu_after[n] - cpu_before.get(n, 0.0) for n in cpu_after}
        figure(f"moved_{name}", moved)
        figure(f"cpu_{name}", ", ".join(f"{n.split('-')[0] if n.startswith('simulator') else n} {c:.1f} s"
                                         for n, c in sorted(spent.items()) if c >= 0.05) + f" over {took:.1f} s")
    if leaving is not None:
        code = leaving.process.wait(timeout=60)
        figure("leave_stop_seconds", time.monotonic() - since, "s")
        figure("leave_exit_code", code)
    return since, time.monotonic()


def _trace(name: str, at: float, client, workers, counts, held: int, listeners: int) -> None:
    """One line: who holds what, and the handovers by state (open: offered, untaken; taken: the taker logging
    in; ready: the taker's socket up, the owner's hand-off to come)."""
    from telephony.sockets import leases

    keys = list(client.scan_iter(match=leases.offer_key("*"), count=1000))
    states = [v.decode() for v in client.mget(keys) if v] if keys else []
    by_state = collections.Counter("ready" if s.endswith("|ready") else "taken" if "|" in s else "open" for s in states)
    print(f"  trace {name} +{at:5.1f}s: {_counts_text(counts, held, listeners)}; offers open {by_state['open']}, "
          f"taken {by_state['taken']}, ready {by_state['ready']}", flush=True)


def _counts_text(counts: dict[str, int], held: int, listeners: int) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) + f", unheld {listeners - held}"


def _share(name: str, client, workers, listeners: int) -> None:
    counts, held = _counts(client, workers)
    share = listeners / len(workers)
    figure(name, ", ".join(f"{n} {c} ({100 * c / share:.0f}% of share)" for n, c in sorted(counts.items()))
           + f"; unheld {listeners - held}")
    progress[name] = dict(counts)


# --- steady calls -----------------------------------------------------------------------------------

class Traffic(threading.Thread):
    """``rate`` calls a second on free terminals, each the same story: rings 0.4 s, talks 0.6 s, hangs up."""

    RING, TALK = 0.4, 0.6

    def __init__(self, sim_url: str, terminals: list[str], rate: float):
        super().__init__(name="scale-out-traffic", daemon=True)
        import requests

        self.http = requests.Session()
        self.base = f"{sim_url}/_sim/istra"
        self.terminals, self.interval = terminals, 1.0 / rate
        self.rng = random.Random(19)
        self.placed: list[tuple[str, float]] = []  # (PBX call id, monotonic time placed)
        self.marks: dict[str, float] = {}
        self.errors = 0
        self._busy: set[str] = set()
        self._agenda: list = []
        self._order = 0
        self._stopping = threading.Event()

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    def stop(self) -> None:
        self._stopping.set()
        self.join(60)

    def run(self) -> None:
        next_call = time.monotonic()
        while not (self._stopping.is_set() and not self._agenda):
            now = time.monotonic()
            if not self._stopping.is_set() and now >= next_call:
                self._place()
                next_call += self.interval
            while self._agenda and self._agenda[0][0] <= now:
                _, _, step = heapq.heappop(self._agenda)
                step()
            time.sleep(0.01)

    def _later(self, seconds: float, step) -> None:
        self._order += 1
        heapq.heappush(self._agenda, (time.monotonic() + seconds, self._order, step))

    def _post(self, path: str, body: dict | None = None) -> dict | None:
        try:
            response = self.http.post(f"{self.base}{path}", json=body, timeout=20)
        except Exception:  # noqa: BLE001 - counted: the figures say how many moves the simulator missed
            self.errors += 1
            return None
        if response.status_code >= 400:
            self.errors += 1
            return None
        return response.json()

    def _place(self) -> None:
        free = [t for t in self.terminals if t not in self._busy]
        if not free:
            return
        terminal = self.rng.choice(free)
        line = self._post("/calls/incoming", {"terminalId": terminal, "from": f"+3361{len(self.placed):07d}"})
        if line is None:
            return
        self._busy.add(terminal)
        call_id = line["callId"]
        self.placed.append((call_id, time.monotonic()))
        progress["calls_placed"] = len(self.placed)

        def hang_up():
            self._post(f"/calls/{call_id}/hangup", {"cause": "disconnect"})
            self._busy.discard(terminal)

        def answer():
            self._post(f"/calls/{call_id}/answer")
            self._later(self.TALK, hang_up)

        self._later(self.RING, answer)


# --- frames -------------------------------------------------------------------------------------------

def _report_frames(traffic: Traffic, moves: list[tuple[float, float]], settle: float) -> None:
    from telephony.models import Call, CallEvent

    placed = dict(traffic.placed)
    figure("calls_placed", len(placed))
    figure("simulator_errors", traffic.errors)

    def stored() -> dict[str, list]:
        rows = collections.defaultdict(list)
        for pbx_call_id, state, pk in Call.objects.filter(pbx_call_id__in=list(placed)).values_list(
                "pbx_call_id", "state", "pk"):
            rows[pbx_call_id].append((state, pk))
        return rows

    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        rows = stored()
        if all(rows.get(c) and all(state == Call.State.ENDED for state, _ in rows[c]) for c in placed):
            break
        time.sleep(1)
    rows = stored()
    call_pks = {pk: c for c, found in rows.items() for _state, pk in found}
    events = collections.Counter()
    for call_pk in CallEvent.objects.filter(call_id__in=list(call_pks)).values_list("call_id", flat=True):
        events[call_pks[call_pk]] += 1
    baseline_end = traffic.marks.get("baseline_end", 0.0)
    baseline = [events[c] for c, at in placed.items() if at < baseline_end - Traffic.RING - Traffic.TALK]
    per_call = collections.Counter(baseline).most_common(1)[0][0] if baseline else 3
    figure("frames_per_call", per_call)  # the most common count over the calls that ended before any move
    figure("calls_before_moves", len(baseline))

    def during_moves(at: float) -> bool:
        return any(start - Traffic.RING - Traffic.TALK <= at <= end + AFTER_MOVE_SECONDS for start, end in moves)

    figures = collections.Counter()
    for call_id, at in placed.items():
        where = "moves" if during_moves(at) else "steady"
        figures[f"calls_{where}"] += 1
        if not rows.get(call_id):
            figures[f"calls_lost_{where}"] += 1
        figures[f"frames_lost_{where}"] += max(0, per_call - events[call_id])
        figures[f"frames_duplicated_{where}"] += max(0, events[call_id] - per_call) + max(0, len(rows.get(call_id, [])) - 1)
        if rows.get(call_id) and any(state != Call.State.ENDED for state, _ in rows[call_id]):
            figures[f"calls_not_ended_{where}"] += 1
    figure("calls_during_moves", figures["calls_moves"])
    figure("frames_lost_during_moves", figures["frames_lost_moves"], "", "0")
    figure("frames_duplicated_during_moves", figures["frames_duplicated_moves"], "", "0")
    figure("frames_lost", figures["frames_lost_moves"] + figures["frames_lost_steady"], "", "0")
    figure("frames_duplicated", figures["frames_duplicated_moves"] + figures["frames_duplicated_steady"], "", "0")
    figure("calls_lost", figures["calls_lost_moves"] + figures["calls_lost_steady"])
    figure("calls_not_ended", figures["calls_not_ended_moves"] + figures["calls_not_ended_steady"])


if __name__ == "__main__":
    from bench.common import run

    run(main)
