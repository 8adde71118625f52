"""Benchmark 7: the Celery worker's CPU per live frame, against the floor of our own stack, in one run.

    .venv/bin/python -m bench.frame_cost [--frames 200] [--rate 10] [--terminals 4] [--floor-units 300]
                                         [--py-spy FILE]

Real parts: the simulator (myCrm, one socket per terminal) and one Celery worker holding those
sockets, on PostgreSQL and Redis, with ``DEBUG=false`` as in production (``bench/procs.py``). A
retailCRM integration serves the account, so every change takes the CRM hand-off (the worker
consumes a queue of its own: the hand-off's tasks wait in Redis instead of running here, so what
is measured is the frame's path, not retailCRM's). The agent and supervisors groups each have a
member, so a card's ``group_send`` reaches a channel as it does a console.

The PBX sends ``--frames`` frames one at a time at ``--rate`` a second (each frame is its own
burst: calls ring, are answered and hang up, round the terminals). The worker's CPU time (user +
system, the whole process) over that window, less its idle CPU measured over an idle window of the
same length in the same run, divided by the frames stored, is ``worker_cpu_per_frame``. Then
``bench.floor_worker`` runs with the worker's environment: one ORM transaction storing a frame and
updating its call plus one ``group_send`` of a card, N times; its CPU per unit is the floor, and
``worker_cpu_ratio_to_floor`` the ratio. ``--py-spy FILE`` records the worker with py-spy during
the traffic window (``FILE.txt``: collapsed stacks, else an SVG flame graph) (its figures then include py-spy's sampling cost: profile, do not measure).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time

from bench.common import REPO, figure, progress, setup_django

FRAMES_PER_CALL = 3  # ringing, talking, dropped
WARM_UP_CALLS = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="frames a second, one at a time")
    parser.add_argument("--terminals", type=int, default=4)
    parser.add_argument("--floor-units", type=int, default=300)
    parser.add_argument("--threads", action="store_true",
                        help="print the worker's CPU per frame by thread (named with py-spy dump)")
    parser.add_argument("--py-spy", default="", help="record the worker with py-spy to this file (flame graph)")
    args = parser.parse_args()
    setup_django()
    from bench.procs import BenchHub, hub_env
    from tests.support.processes import wait_for

    hub = BenchHub(hub_env(LISTENER_SCAN_SECONDS="5"))
    try:
        hub.start_simulator()
        terminals = _world(hub, args.terminals)
        # The default queue only, as a worker that holds sockets does: the CRM tasks the hand-off queues go to
        # the call-events queue (an events worker's, in production) and are left in Redis, not run in the
        # measured process. A worker without the default queue holds no sockets (ctihub/celery_steps.py).
        from django.conf import settings

        from tests.support.processes import celery_worker

        worker = celery_worker(f"bench-frame-cost-{hub.sim_port}", hub.env, "-Q", settings.CELERY_TASK_DEFAULT_QUEUE)
        hub.processes.append(worker)
        wait_for(lambda: "ready." in worker.log() or not worker.alive(), 60, what="a celery worker")
        from telephony.models import CallEvent, Listener

        wait_for(lambda: Listener.objects.filter(state="connected").count() >= len(terminals), 60, interval=0.2,
                 what="every terminal's listener connected")
        _members()
        sim = _Sim(hub.sim_url)
        # Warm-up: the first frames import, compile and fill the worker's caches.
        warm = WARM_UP_CALLS * FRAMES_PER_CALL
        _traffic(sim, terminals, warm, rate=args.rate, first_call=0)
        wait_for(lambda: CallEvent.objects.count() >= warm, 30, interval=0.1, what="the warm-up frames stored")
        time.sleep(2)  # the warm-up's after-commit work and once-a-second writes are done
        deliveries = _Deliveries()
        deliveries.take()  # only the measured frames' cards are counted
        deliveries.count = 0
        window = args.frames / args.rate

        idle_cpu, idle_system = _cpu(worker), _cpu(worker, slice(1, 2))
        time.sleep(window)
        idle_cpu, idle_system = _cpu(worker) - idle_cpu, _cpu(worker, slice(1, 2)) - idle_system
        progress["idle_window_seconds"] = round(window, 1)

        spy = _py_spy(worker, args.py_spy)
        threads_before = _thread_cpu(worker) if args.threads else {}
        hand_offs = _HandOffs()
        deliveries.start()
        busy_cpu, busy_system, started = _cpu(worker), _cpu(worker, slice(1, 2)), time.monotonic()
        sent = _traffic(sim, terminals, args.frames, rate=args.rate, first_call=WARM_UP_CALLS)
        progress["frames_sent"] = sent
        wait_for(lambda: CallEvent.objects.count() >= warm + sent, 30, interval=0.05,
                 what="every frame stored")
        # The last frame's card and hand-off leave after its commit: the window ends a rate's interval later,
        # and never before the idle window's length.
        time.sleep(max(1.0 / args.rate, window - (time.monotonic() - started)))
        busy_seconds = time.monotonic() - started
        if args.threads:
            _print_threads(worker, threads_before, sent)
        busy_cpu, busy_system = _cpu(worker) - busy_cpu, _cpu(worker, slice(1, 2)) - busy_system
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        stored = CallEvent.objects.count() - warm
        delivered = deliveries.stop()
        handed_off = hand_offs.count()
        if not worker.alive():
            raise RuntimeError("the worker died during the run")
        floor = _floor(hub.env, args.floor_units)
    finally:
        hub.stop()
    idle_per_second = idle_cpu / window
    per_frame = (busy_cpu - idle_per_second * busy_seconds) / stored
    figure("frames_sent", sent)
    figure("frames_stored", stored, "", str(sent))
    figure("cards_delivered", delivered, "", f"{sent} (every frame's card in its agent's channel)")
    # Every frame changes its call and no start event is ever sent (the CRM tasks are not run): each
    # change is one sync of its call queued for the call-events worker.
    figure("crm_hand_offs", handed_off, "", f"{sent} (one sync task a change, in the call-events queue)")
    figure("frame_rate", sent / busy_seconds, "frames/s")
    figure("worker_idle_cpu", idle_per_second * 1000, "ms/s")
    figure("worker_busy_cpu", busy_cpu / busy_seconds * 1000, "ms/s")
    figure("worker_cpu_per_frame", per_frame * 1000, "ms", "<= 3 ms")
    system_per_frame = (busy_system - idle_system / window * busy_seconds) / stored
    figure("worker_system_cpu_per_frame", system_per_frame * 1000, "ms", "(the kernel's share of it)")
    figure("floor_cpu_per_frame", floor * 1000, "ms")
    figure("worker_cpu_ratio_to_floor", per_frame / floor, "x", "<= 1.5")
    if stored != sent:
        raise RuntimeError(f"{sent} frames sent, {stored} stored")
    if delivered != sent:
        raise RuntimeError(f"{sent} cards published, {delivered} reached their agent's channel")
    if handed_off != sent:
        raise RuntimeError(f"{sent} changes, {handed_off} CRM hand-offs queued")


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


def _traffic(sim: _Sim, terminals: list[str], frames: int, rate: float, first_call: int) -> int:
    """``frames`` frames at ``rate`` a second, one at a time: each terminal's call rings, is answered, hangs up."""
    live: dict[str, tuple[str, int]] = {}  # terminal -> (call id, frames sent for it)
    interval = 1.0 / rate
    next_at = time.monotonic()
    sent, call_n = 0, first_call
    while sent < frames:
        terminal = terminals[sent % len(terminals)]
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += interval
        call_id, done = live.get(terminal, (None, 0))
        if call_id is None:
            call_n += 1
            call_id = sim.post("/calls/incoming", {"terminalId": terminal, "from": f"+336{call_n:08d}"})["callId"]
        else:
            sim.post(f"/calls/{call_id}/{'answer' if done == 1 else 'hangup'}", {})
        done += 1
        live[terminal] = (call_id, done) if done < FRAMES_PER_CALL else (None, 0)
        sent += 1
    return sent


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
    account = PbxAccount.objects.create(name="bench", kind=PbxAccount.Kind.ISTRA_MYCRM,
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
    import psutil

    return {t.id: t.user_time + t.system_time for t in psutil.Process(worker.process.pid).threads()}


def _print_threads(worker, before: dict[int, float], frames: int) -> None:
    """Each thread's CPU over the traffic window per frame, busiest first, named by ``py-spy dump``."""
    import json

    after = _thread_cpu(worker)
    names: dict[int, str] = {}
    dump = subprocess.run([_py_spy_path(), "dump", "--json", "-p", str(worker.process.pid)],
                          capture_output=True, text=True, timeout=60)
    try:
        for thread in json.loads(dump.stdout):
            names[thread.get("os_thread_id")] = thread.get("thread_name") or str(thread.get("thread_id"))
    except ValueError:
        pass
    used = collections.Counter()
    for tid, cpu in after.items():
        name = re.sub(r"-\d+$", "-N", names.get(tid, "(not python)"))
        used[name] += cpu - before.get(tid, 0.0)
    for name, cpu in used.most_common(8):
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


def _floor(env: dict[str, str], units: int) -> float:
    """``bench.floor_worker`` with exactly the worker's environment: its CPU per unit, in seconds."""
    done = subprocess.run([sys.executable, "-m", "bench.floor_worker", "--units", str(units)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the floor failed: {done.stdout[-1000:]}{done.stderr[-2000:]}")
    found = re.search(r"^floor_cpu_per_frame: (\S+) ms", done.stdout, re.M)
    if found is None:
        raise RuntimeError(f"the floor printed no figure: {done.stdout[-1000:]}")
    return float(found.group(1)) / 1000


if __name__ == "__main__":
    from bench.common import run

    run(main)
