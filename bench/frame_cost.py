"""Benchmark 7: the Celery worker's CPU per live frame, against the floor of our own stack, in one run.

    .venv/bin/python -m bench.frame_cost [--frames 500] [--rounds 5] [--rate 10] [--terminals 4]
                                         [--floor-units N] [--back-to-back-units 300] [--threads] [--py-spy FILE]

Real parts: the simulator (myCrm, one socket per terminal) and one Celery worker holding those
sockets, on PostgreSQL and Redis, with ``DEBUG=false`` as in production (``bench/procs.py``). A
retailCRM integration serves the account, so every change takes the CRM hand-off (the worker
consumes a queue of its own: the hand-off's tasks wait in Redis instead of running here, so what
is measured is the frame's path, not retailCRM's). The agent and supervisors groups each have a
member, so a card's ``group_send`` reaches a channel as it does a console.

The run is ``--rounds`` rounds in turns (ABAB...), so a change in the machine's speed during the run
(other work on a shared machine: the floor moved 1.45-2.25 ms between runs minutes apart) hits both
sides of each ratio alike:

- A, the worker: the PBX sends its share of ``--frames`` one at a time at ``--rate`` a second (each
  frame is its own burst: calls ring, are answered and hang up, round the terminals). The worker's
  CPU (every thread's run time, to the nanosecond) over the round, less its idle CPU for as long,
  divided by the frames, is the round's CPU per frame;
- B, the floor: ``bench.floor_worker``, started once with the worker's environment, does the same
  number of units at the same pace (one ORM transaction storing a frame and updating its call plus
  one ``group_send`` of a card), then ``--back-to-back-units`` units back to back (the floor's first
  definition, for comparison). The worker is idle meanwhile: what it spends then is its idle CPU.

Each round's figures and ratios are printed; ``worker_cpu_per_frame``, ``floor_cpu_per_frame`` and
``worker_cpu_ratio_to_floor`` are the medians (of the per-round ratios for the ratio). ``--py-spy FILE``
records the worker with py-spy over the rounds (``FILE.txt``: collapsed stacks, else an SVG flame
graph; its figures then include py-spy's sampling cost: profile, do not measure).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import time

from bench.common import REPO, figure, progress, setup_django

FRAMES_PER_CALL = 3  # ringing, talking, dropped
WARM_UP_CALLS = 3
AFTER_THE_LAST_FRAME = 1.0  # seconds
BENCH_ACCOUNT = "bench"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=500, help="frames in all, split evenly over the rounds")
    parser.add_argument("--rounds", type=int, default=5,
                        help="worker and floor rounds in turns (ABAB...): each round's ratio, and their median")
    parser.add_argument("--rate", type=float, default=10.0, help="frames a second, one at a time")
    parser.add_argument("--terminals", type=int, default=4)
    parser.add_argument("--floor-units", type=int, default=0,
                        help="floor units in all, paced at --rate (default: as many as frames)")
    parser.add_argument("--back-to-back-units", type=int, default=300,
                        help="floor units a round sent back to back, the floor's old definition (0: none)")
    parser.add_argument("--threads", action="store_true",
                        help="print the worker's CPU per frame by thread (named with py-spy dump)")
    parser.add_argument("--py-spy", default="", help="record the worker with py-spy to this file (flame graph)")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, args.frames))
    frames_of = _split(args.frames, rounds)
    units_of = _split(args.floor_units or args.frames, rounds)
    setup_django()
    from bench.procs import BenchHub, hub_env
    from tests.support.processes import wait_for

    hub = BenchHub(hub_env(LISTENER_SCAN_SECONDS="5"))
    floor = None
    try:
        hub.start_simulator()
        terminals = _world(hub, args.terminals)
        # The default queue only, as a worker that holds sockets does: the CRM tasks the hand-off queues go to
        # the call-events queue (an events worker's, in production) and are left in Redis, not run in the
        # measured process. A worker without the default queue holds no sockets (ctihub/celery_steps.py).
        from django.conf import settings

        from tests.support.processes import celery_worker, wait_ready

        worker = celery_worker(f"bench-frame-cost-{hub.sim_port}", hub.env, "-Q", settings.CELERY_TASK_DEFAULT_QUEUE)
        hub.processes.append(worker)
        floor = _Floor(hub.env)  # its Django start-up while the worker starts
        wait_ready(worker)
        from telephony.models import Listener

        wait_for(lambda: Listener.objects.filter(state="connected").count() >= len(terminals), 60, interval=0.2,
                 what="every terminal's listener connected")
        _members()
        traffic = _Traffic(_Sim(hub.sim_url), terminals, first_call=0)
        # Warm-up: the first frames import, compile and fill the worker's caches.
        warm = WARM_UP_CALLS * FRAMES_PER_CALL
        traffic.send(warm, rate=args.rate)
        wait_for(lambda: _stored() >= warm, 30, interval=0.1, what="the warm-up frames stored")
        floor.ready()
        time.sleep(2)  # the warm-up's after-commit work and once-a-second writes are done
        deliveries = _Deliveries()
        deliveries.take()  # only the measured frames' cards are counted
        deliveries.count = 0

        spy = _py_spy(worker, args.py_spy)
        hand_offs = _HandOffs()
        first_event = _last_event_id() + 1
        deliveries.start()
        results: list[dict] = []
        by_thread: collections.Counter = collections.Counter()
        busy_system = 0.0
        idle_cpu = idle_seconds = 0.0
        sent, traffic_seconds = 0, 0.0
        for n in range(rounds):
            # A: the worker, fed frames one at a time. Its CPU to the nanosecond (each thread's run time), so a
            # round of a few hundred ms of CPU is not read in 10 ms clock ticks.
            threads_before, system_before = _thread_cpu(worker), _cpu(worker, slice(1, 2))
            started = time.monotonic()
            sent += traffic.send(frames_of[n], rate=args.rate)
            traffic_seconds += time.monotonic() - started
            wait_for(lambda: _stored() >= warm + sent, 30, interval=0.05,
                     what="every frame stored")
            # The last frames' after-commit work (card, hand-off) and what the worker does within a second of
            # them (the metrics' flush every 0.5 s, the listeners' "last event" write) are the round's too.
            time.sleep(AFTER_THE_LAST_FRAME)
            threads_after, busy_seconds = _thread_cpu(worker), time.monotonic() - started
            busy_system += _cpu(worker, slice(1, 2)) - system_before
            used = _delta(threads_before, threads_after)
            by_thread.update(used)
            progress["frames_sent"] = sent
            # B: the floor, the same number of units at the same pace, then back to back; the worker is idle
            # meanwhile, and what it spends then is its idle CPU (subtracted from the rounds' busy CPU).
            idle_before, idle_started = _thread_cpu(worker), time.monotonic()
            paced = floor.round(units_of[n], args.rate)
            back_to_back = floor.round(args.back_to_back_units, 0.0) if args.back_to_back_units else None
            idle_cpu += sum(_delta(idle_before, _thread_cpu(worker)).values())
            idle_seconds += time.monotonic() - idle_started
            results.append({"frames": frames_of[n], "busy_cpu": sum(used.values()), "busy_seconds": busy_seconds,
                            "floor": paced, "back_to_back": back_to_back, "load": os.getloadavg()[0]})
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        if args.threads:
            _print_threads(worker, by_thread, sent)
        stored = _stored() - warm
        delivered = deliveries.stop()
        handed_off = hand_offs.count()
        changes = _commits_per_call(first_event)
        if not worker.alive():
            raise RuntimeError("the worker died during the run")
    finally:
        if floor is not None:
            floor.close()
        hub.stop()
    idle_per_second = idle_cpu / idle_seconds
    ratios, back_to_back_ratios, costs = [], [], []
    for n, result in enumerate(results, 1):
        per_frame = (result["busy_cpu"] - idle_per_second * result["busy_seconds"]) / result["frames"]
        costs.append(per_frame)
        ratios.append(per_frame / result["floor"])
        line = (f"worker {per_frame * 1000:.2f} ms/frame, floor {result['floor'] * 1000:.2f} ms"
                f" ({ratios[-1]:.2f}x)")
        if result["back_to_back"]:
            back_to_back_ratios.append(per_frame / result["back_to_back"])
            line += f"; back to back {result['back_to_back'] * 1000:.2f} ms ({back_to_back_ratios[-1]:.2f}x)"
        print(f"round_{n}: {line}; {result['frames']} frames, load {result['load']:.2f}", flush=True)
    figure("frames_sent", sent)
    figure("frames_stored", stored, "", str(sent))
    figure("cards_delivered", delivered, "", f"{sent} (every frame's card in its agent's channel)")
    # Every frame changes its call and no start event is ever sent (the CRM tasks are not run): each committed
    # change of a call is one sync of it queued for the call-events worker. Two frames of a call read in one
    # burst (the socket's thread behind, on a busy machine or at a fast pace) are one commit, one hand-off.
    figure("crm_hand_offs", handed_off, "",
           f"{changes} (one sync task a call a commit, in the call-events queue; {sent} frames)")
    busy_seconds = sum(result["busy_seconds"] for result in results)
    figure("frame_rate", sent / traffic_seconds, "frames/s")
    figure("worker_idle_cpu", idle_per_second * 1000, "ms/s")
    figure("worker_busy_cpu", sum(result["busy_cpu"] for result in results) / busy_seconds * 1000, "ms/s")
    figure("worker_cpu_per_frame", statistics.median(costs) * 1000, "ms", "<= 3 ms (median of the rounds)")
    # The kernel's share, from the process's user/system split (10 ms clock ticks: over all the rounds).
    figure("worker_system_cpu_per_frame", busy_system / sent * 1000, "ms", "(the kernel's share of it, idle included)")
    figure("floor_cpu_per_frame", statistics.median(r["floor"] for r in results) * 1000, "ms",
           f"(at {args.rate:g} a second, as the frames; median of the rounds)")
    if back_to_back_ratios:
        figure("floor_back_to_back_cpu_per_frame", statistics.median(r["back_to_back"] for r in results) * 1000,
               "ms", "(units back to back: the floor's first definition)")
        figure("worker_cpu_ratio_to_back_to_back_floor", statistics.median(back_to_back_ratios), "x",
               "(median of the rounds' ratios)")
    figure("worker_cpu_ratio_to_floor", statistics.median(ratios), "x", "<= 1.5 (median of the rounds' ratios)")
    if stored != sent:
        raise RuntimeError(f"{sent} frames sent, {stored} stored")
    if delivered != sent:
        raise RuntimeError(f"{sent} cards published, {delivered} reached their agent's channel")
    if handed_off != changes:
        raise RuntimeError(f"{changes} commits changing a call, {handed_off} CRM hand-offs queued")


def _stored() -> int:
    """The frames the worker stored (the floor stores its units under an account of its own)."""
    from telephony.models import CallEvent

    return CallEvent.objects.filter(call__account__name=BENCH_ACCOUNT).count()


def _last_event_id() -> int:
    from telephony.models import CallEvent

    return CallEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _commits_per_call(first_event: int) -> int:
    """How many (transaction, call) pairs stored the benchmark's frames from ``first_event`` on: rows written by one
    transaction share its id (PostgreSQL's ``xmin``), and each such pair is one change handed off to the CRM."""
    from django.db import connection

    from telephony.models import Call, CallEvent, PbxAccount

    events, calls, accounts = (connection.ops.quote_name(model._meta.db_table) for model in (CallEvent, Call, PbxAccount))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(DISTINCT (e.xmin::text, e.call_id)) FROM {events} e"
                       f" JOIN {calls} c ON c.id = e.call_id JOIN {accounts} a ON a.id = c.account_id"
                       f" WHERE e.id >= %s AND a.name = %s", [first_event, BENCH_ACCOUNT])
        return cursor.fetchone()[0]


def _split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` as even as they go (the first ones a unit more)."""
    return [total // parts + (1 if n < total % parts else 0) for n in range(parts)]


class _Floor:
    """``bench.floor_worker --serve`` with exactly the worker's environment, asked for one round at a time."""

    def __init__(self, env: dict[str, str]):
        self.process = subprocess.Popen([sys.executable, "-m", "bench.floor_worker", "--serve"], env=env, cwd=REPO,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)

    def _answer(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            self.process.kill()
            raise RuntimeError(f"the floor failed: {self.process.stderr.read()[-2000:]}")
        return line.strip()

    def ready(self) -> None:
        answer = self._answer()
        if answer != "ready":
            raise RuntimeError(f"the floor said {answer!r}")

    def round(self, units: int, rate: float) -> float:
        """Its CPU per unit over ``units`` units at ``rate`` a second (0: back to back), in seconds."""
        self.process.stdin.write(f"{units} {rate}\n")
        self.process.stdin.flush()
        cpu, _elapsed = self._answer().split()
        return float(cpu) / units

    def close(self) -> None:
        try:
            self.process.stdin.close()  # it cleans up after itself and exits
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


class _HandOffs:
    """The CRM hand-offs (``sync_call_task`` messages) queued in the call-events list from now on."""

    def __init__(self):
        import redis
        from django.conf import settings

        self.client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        self.queue = settings.CRM_EVENTS_QUEUE
        self.before = self._sync_tasks()

    def _sync_tasks(self) -> int:
        import json

        return sum(json.loads(raw)["headers"]["task"] == "crm_sync.tasks.sync_call_task"
                   for raw in self.client.lrange(self.queue, 0, -1))

    def count(self) -> int:
        return self._sync_tasks() - self.before


class _Sim:
    """The simulator's control API on one kept-alive HTTP session (the bench's own cost is not measured)."""

    def __init__(self, sim_url: str):
        import requests

        self.base = f"{sim_url}/_sim/istra"
        self.session = requests.Session()

    def post(self, route: str, body: dict) -> dict:
        response = self.session.post(f"{self.base}{route}", json=body, timeout=20)
        response.raise_for_status()
        return response.json()


class _Traffic:
    """Frames one at a time, round the terminals: each terminal's call rings, is answered, hangs up, across rounds."""

    def __init__(self, sim: _Sim, terminals: list[str], first_call: int):
        self.sim, self.terminals, self.call_n = sim, terminals, first_call
        self.live: dict[str, tuple[str, int]] = {}  # terminal -> (call id, frames sent for it)
        self.sent = 0

    def send(self, frames: int, rate: float) -> int:
        """``frames`` frames at ``rate`` a second."""
        interval = 1.0 / rate
        next_at = time.monotonic()
        for _ in range(frames):
            terminal = self.terminals[self.sent % len(self.terminals)]
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            call_id, done = self.live.get(terminal, (None, 0))
            if call_id is None:
                self.call_n += 1
                call_id = self.sim.post("/calls/incoming", {"terminalId": terminal,
                                                            "from": f"+336{self.call_n:08d}"})["callId"]
            else:
                self.sim.post(f"/calls/{call_id}/{'answer' if done == 1 else 'hangup'}", {})
            done += 1
            self.live[terminal] = (call_id, done) if done < FRAMES_PER_CALL else (None, 0)
            self.sent += 1
        return frames


def _world(hub, terminals: int) -> list[str]:
    """A myCrm user with ``terminals`` terminals, each with its agent, and a retailCRM integration serving them."""
    from django.contrib.auth import get_user_model

    from accounts.models import Agent
    from crm_sync.models import RetailCrmIntegration
    from telephony import control
    from telephony.models import PbxAccount, Terminal
    from tests.support.sim_control import IstraControl

    sim = IstraControl(hub.sim_url)
    sim.add_user("bench", "bench-pass", mycrm=True)
    ids = [str(5985841581756135000 + t) for t in range(terminals)]
    for t, pbx_id in enumerate(ids):
        sim.add_extension(pbx_id, str(1000 + t), owner="bench")
    account = PbxAccount.objects.create(name=BENCH_ACCOUNT, kind=PbxAccount.Kind.ISTRA_MYCRM,
                                        base_url=f"{hub.sim_url}/restletrouter", login="bench", password="bench-pass")
    control.sync_terminals(account)
    for t, pbx_id in enumerate(ids):
        user = get_user_model().objects.create_user(f"agent{t}")
        agent = Agent.objects.create(user=user, extension_code=str(1000 + t))
        Terminal.objects.filter(account=account, pbx_id=pbx_id).update(agent=agent)
    RetailCrmIntegration.objects.create(name="bench", crm_url=f"{hub.sim_url}/retailcrm", api_key="bench-key")
    return ids


def _members() -> None:
    """A channel in the supervisors group and in each agent's, as a console would be."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from accounts.models import Agent
    from telephony.cards import SUPERVISORS_GROUP, agent_group

    layer = get_channel_layer()
    for group in [SUPERVISORS_GROUP, *(agent_group(pk) for pk in Agent.objects.values_list("pk", flat=True))]:
        async_to_sync(layer.group_add)(group, f"bench-console.{group}")


class _Deliveries:
    """Counts the cards reaching the agents' channels, taking them out every second (a channel's messages
    expire after CHANNEL_LAYERS' ``expiry``, 30 s, and it holds ``capacity`` of them)."""

    def __init__(self):
        import threading

        import redis
        from channels.layers import get_channel_layer
        from django.conf import settings

        from accounts.models import Agent
        from telephony.cards import agent_group

        prefix = get_channel_layer().prefix
        self.keys = [f"{prefix}bench-console.{agent_group(pk)}" for pk in Agent.objects.values_list("pk", flat=True)]
        self.client = redis.Redis.from_url(settings.REDIS_URL)
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def take(self) -> int:
        pipe = self.client.pipeline(transaction=True)  # counted and removed at once: none lost in between
        for key in self.keys:
            pipe.zcard(key)
            pipe.delete(key)
        taken = sum((pipe.execute())[0::2])
        self.count += taken
        return taken

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.take()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.take()
        self.client.close()
        return self.count


def _cpu(worker, part: slice = slice(0, 2)) -> float:
    """The worker's CPU seconds so far: user and system (``part``: one of them)."""
    import psutil

    process = psutil.Process(worker.process.pid)
    return sum(sum(p.cpu_times()[part]) for p in [process, *process.children(recursive=True)])


def _thread_cpu(worker) -> dict[int, float]:
    """Each thread's CPU seconds so far (the worker's and its children's), to the nanosecond: the scheduler's run
    time (``/proc/PID/task/TID/schedstat``), not the 10 ms clock ticks of ``/proc/PID/stat``."""
    import psutil

    process = psutil.Process(worker.process.pid)
    out: dict[int, float] = {}
    for pid in [process.pid, *(child.pid for child in process.children(recursive=True))]:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as stats:
                    out[int(tid)] = int(stats.read().split()[0]) / 1e9
            except (OSError, ValueError):
                pass  # a thread that ended meanwhile
    return out


def _delta(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    return {tid: cpu - before.get(tid, 0.0) for tid, cpu in after.items()}


def _print_threads(worker, used: dict[int, float], frames: int) -> None:
    """Each thread's CPU over the worker's rounds per frame, busiest first, named by ``py-spy dump``."""
    import json

    names: dict[int, str] = {}
    dump = subprocess.run([_py_spy_path(), "dump", "--json", "-p", str(worker.process.pid)],
                          capture_output=True, text=True, timeout=60)
    try:
        for thread in json.loads(dump.stdout):
            names[thread.get("os_thread_id")] = thread.get("thread_name") or str(thread.get("thread_id"))
    except ValueError:
        pass
    by_name = collections.Counter()
    for tid, cpu in used.items():
        by_name[re.sub(r"-\d+$", "-N", names.get(tid, "(not python)"))] += cpu
    for name, cpu in by_name.most_common(8):
        figure(f"thread_cpu_per_frame[{name}]", cpu / frames * 1000, "ms")


def _py_spy_path() -> str:
    """The venv's py-spy, else one on PATH (a shared venv may not have it: ``pip install --target DIR py-spy``)."""
    import os
    import shutil

    own = str(sys.prefix) + "/bin/py-spy"
    return own if os.path.exists(own) else (shutil.which("py-spy") or own)


def _py_spy(worker, path: str):
    if not path:
        return None
    # A .txt file gets collapsed stacks (one line per stack, its sample count last), anything else a flame graph.
    kind = "raw" if path.endswith(".txt") else "flamegraph"
    spy = subprocess.Popen([_py_spy_path(), "record", "-p", str(worker.process.pid), "-o", path,
                            "--rate", "200", "--gil", "--format", kind], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return spy


if __name__ == "__main__":
    from bench.common import run

    run(main)
