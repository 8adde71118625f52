"""PBX frame to retailCRM's call event: how long the manager's pop-up in retailCRM waits.

    .venv/bin/python -m bench.crm_event_latency [--rate 15] [--seconds 20] [--call-seconds 1.0]

Real parts: the simulator (Istra myCrm, one socket per terminal, and retailCRM), the production
shape of Celery (a worker holding the PBX sockets, ``--concurrency 2``, and the call-events worker,
``-Q call-events``; ``--no-events-worker`` leaves it out), PostgreSQL and Redis. ``--rate`` new
calls a second ring for ``--call-seconds`` and hang up unanswered: each makes a start event (``in``)
and a ``hangup`` at retailCRM, and one upload (gathered, up to 50 calls a request).

Timing: the simulator notes when each websocket frame has left (``/_sim/istra/frame-log``) and when
each call event reached retailCRM; a call's ringing frame is matched with its ``in`` event and its
dropped frame with its ``hangup`` by the caller's number. Both clocks are this machine's.

Figures: p50/p95/p99/max for start and hangup events apart; sent, received, missing, duplicated;
requests/s at retailCRM (telephony: mean over the run and the most in any one-second window, limit
40); what waited for the shared rate limit and how long (call events: high priority, uploads: low,
``ctihub.lib.metrics.crm_token_wait``); the deepest the two Celery queues got; and
``uploads_sent_while_a_start_event_waited``: uploads that took a token while a call event had been
refused one and had not got it yet, from the telephony bucket's own timeline (0 when events go first).
Above the limit (``--rate 30``: 60 events a second for a bucket of 34) events queue and uploads wait.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import re
import threading
import time

from bench.common import figure, no_pauses_of_our_own, percentiles, progress, setup_django

START, HANGUP = "in", "hangup"
TERMINAL_BASE = 5985841581756135000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=15.0, help="new calls a second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--call-seconds", type=float, default=1.0, help="how long each call rings")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to wait for the last events after the traffic (default: 15 + the run)")
    parser.add_argument("--waiting-after", type=float, default=0.3,
                        help="a start event not at retailCRM this long after its frame counts as waiting")
    parser.add_argument("--events-concurrency", type=int, default=4)
    parser.add_argument("--no-events-worker", action="store_true")
    parser.add_argument("--target-p99-ms", type=float, default=100.0)
    args = parser.parse_args()
    setup_django()
    from bench.procs import BenchHub, hub_env
    from tests.support.processes import celery_worker, wait_for

    terminals = int(math.ceil(args.rate * (args.call_seconds + 1.5))) + 5
    hub = BenchHub(hub_env(LISTENER_SCAN_SECONDS="1", BENCH_FLOORS="true"))
    workers = []
    try:
        hub.start_simulator()
        numbers = _world(hub, terminals)
        workers.append(_start(hub, celery_worker(f"bench-worker-{hub.sim_port}", hub.env, "--concurrency", "2")))
        if not args.no_events_worker:
            from django.conf import settings

            workers.append(_start(hub, celery_worker(
                f"bench-events-{hub.sim_port}", hub.env, "-Q", settings.CRM_EVENTS_QUEUE,
                "--concurrency", str(args.events_concurrency))))
        from telephony.models import Listener

        wait_for(lambda: Listener.objects.filter(state="connected").count() >= terminals, 120, interval=0.5,
                 what="every terminal's listener connected")
        progress["listeners_connected"] = terminals
        _sim_post(hub, "/_sim/istra/frame-log", {"enabled": True})
        _record_token_timeline()
        cpu_before = _cpu(workers)
        depths = QueueDepths()
        depths.start()
        with no_pauses_of_our_own():
            placed = asyncio.run(_traffic(hub.sim_url, numbers, args))
        progress["calls_placed"] = len(placed)
        settle = args.settle or 15 + args.seconds
        _wait_for_events(hub, 2 * len(placed), settle)
        cpu = [after - before for after, before in zip(_cpu(workers), cpu_before)]  # not the uploads' idle wait
        _wait_for_uploads(hub, len(placed), 5.0)
        depths.stop()
        _report(hub, args, placed, depths, cpu)
        if len(workers) > 1:
            _floor(hub, args, workers[1], cpu[1])
    finally:
        hub.stop()


def _start(hub, worker):
    hub.processes.append(worker)
    from tests.support.processes import wait_ready

    return wait_ready(worker)


def _world(hub, terminals: int) -> list[str]:
    """A myCrm user with ``terminals`` terminals, each with an agent retailCRM knows; the integration."""
    from django.contrib.auth import get_user_model

    from accounts.models import Agent
    from crm_sync import domain as crm_domain
    from crm_sync.models import RetailCrmIntegration
    from telephony import control
    from telephony.models import PbxAccount, Terminal
    from tests.support.retailcrm_sim import API_KEY, RetailCrmControl
    from tests.support.sim_control import IstraControl

    sim = IstraControl(hub.sim_url)
    sim.add_user("bench", "bench-pass", mycrm=True)
    ids = [str(TERMINAL_BASE + t) for t in range(terminals)]
    for t, pbx_id in enumerate(ids):
        sim.add_extension(pbx_id, str(1000 + t), owner="bench")
    crm = RetailCrmControl(hub.sim_url)
    crm.add_api_key(API_KEY)
    account = PbxAccount.objects.create(name="bench", kind=PbxAccount.Kind.ISTRA_MYCRM,
                                        base_url=f"{hub.sim_url}/restletrouter", login="bench", password="bench-pass")
    control.sync_terminals(account)
    User = get_user_model()
    for t, pbx_id in enumerate(ids):
        crm.add_user(100 + t)
        user = User.objects.create(username=f"agent{t}")
        agent = Agent.objects.create(user=user, extension_code=str(1000 + t), retailcrm_user_id=str(100 + t))
        Terminal.objects.filter(account=account, pbx_id=pbx_id).update(agent=agent)
    integration = RetailCrmIntegration.objects.create(name="bench", crm_url=hub.sim_url, api_key=API_KEY,
                                                      module_code="ctihub", client_id="bench-client-id-0123456789")
    crm_domain.register_integration(integration)
    return ids


def _sim_post(hub, path: str, body: dict):
    import requests

    response = requests.post(f"{hub.sim_url}{path}", json=body, timeout=20)
    response.raise_for_status()
    return response.json()


def _sim_get(hub, path: str):
    import requests

    response = requests.get(f"{hub.sim_url}{path}", timeout=60)
    response.raise_for_status()
    return response.json()


def _events_in(hub) -> int:
    return _sim_get(hub, "/_sim/retailcrm/state")["events"]


def _wait_for_events(hub, count: int, settle: float) -> None:
    """Until retailCRM has ``count`` events or ``settle`` s passed: a run that misses some reports them."""
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline and _events_in(hub) < count:
        time.sleep(0.5)


def _timeline_key() -> str:
    from crm_sync.retailcrm.ratelimit import TELEPHONY, RateLimiter
    from tests.support.retailcrm_sim import API_KEY

    return f"{RateLimiter().key(API_KEY, TELEPHONY)}:timeline"


def _record_token_timeline() -> None:
    """Have the telephony bucket note every grant and every call event's wait (while this list exists)."""
    from ctihub.lib.shared_redis import shared_redis

    shared_redis().rpush(_timeline_key(), "on")
    shared_redis().pexpire(_timeline_key(), 600_000)


def uploads_granted_while_an_event_waited(entries: list[str]) -> tuple[int, int]:
    """(uploads that took a token while a call event was refused one and had not got it yet, such waits)."""
    waiting_since: dict[str, float] = {}
    intervals, uploads = [], []
    for entry in entries:
        parts = entry.split()
        if len(parts) != 4:
            continue  # the marker
        priority, what, waiter, now = parts[0], parts[1], parts[2], float(parts[3])
        if priority == "1" and what == "waiting":
            waiting_since.setdefault(waiter, now)
        elif priority == "1" and what == "granted" and waiter in waiting_since:
            intervals.append((waiting_since.pop(waiter), now))
        elif priority == "0" and what == "granted":
            uploads.append(now)
    overtaking = sum(1 for u in uploads if any(begin < u < end for begin, end in intervals))
    return overtaking, len(intervals)


def _floor(hub, args, events_worker, events_worker_cpu: float) -> None:
    """The call-events worker's floor, on the same process: a task that only sends one call event.

    As many as the run's events, at the run's event rate; its CPU per event beside the run's.
    """
    from django.conf import settings

    from crm_sync.models import RetailCrmIntegration
    from crm_sync.tasks import bench_floor_event_task

    received = _events_in(hub)
    count = received
    integration_id = RetailCrmIntegration.objects.get().pk
    before = _cpu([events_worker])[0]
    interval = 1.0 / (2 * args.rate)
    started = time.monotonic()
    for n in range(count):
        delay = started + n * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        event = {"type": "in", "phone": f"+3362{n:07d}", "codes": ["1000"], "userIds": [100],
                 "callExternalId": f"floor-{n}"}
        bench_floor_event_task.apply_async((integration_id, event), queue=settings.CRM_EVENTS_QUEUE)
    _wait_for_events(hub, received + count, 15 + args.seconds)
    sent = _events_in(hub) - received
    cpu = _cpu([events_worker])[0] - before
    if sent:
        floor_ms = 1000 * cpu / sent
        figure("floor_events_sent", sent)
        figure("floor_events_worker_cpu_per_event", floor_ms, "ms")
        figure("events_worker_cpu_per_event_vs_floor", 1000 * events_worker_cpu / max(1, received) / floor_ms, "x")


def _wait_for_uploads(hub, count: int, settle: float) -> None:
    """The last calls' upload gathers for a second; give it a few (a run above the limit may not get them all)."""
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline and _sim_get(hub, "/_sim/retailcrm/state")["calls"] < count:
        time.sleep(0.5)


def _cpu(workers) -> list[float]:
    """User + system CPU seconds of each worker process so far."""
    import psutil

    return [sum(psutil.Process(w.process.pid).cpu_times()[:2]) for w in workers]


class QueueDepths(threading.Thread):
    """The deepest each Celery queue (a Redis list) got, sampled every 100 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        from django.conf import settings

        self.queues = (settings.CRM_EVENTS_QUEUE, settings.CELERY_TASK_DEFAULT_QUEUE)
        self.deepest = dict.fromkeys(self.queues, 0)
        self._stop_event = threading.Event()

    def run(self) -> None:
        from ctihub.lib.shared_redis import shared_redis

        r = shared_redis()
        while not self._stop_event.wait(0.1):
            for queue in self.queues:
                self.deepest[queue] = max(self.deepest[queue], r.llen(queue))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


async def _traffic(sim_url: str, terminals: list[str], args) -> dict[str, str]:
    """``rate`` new calls a second, each on a free terminal, ringing ``call_seconds`` then hung up.

    Returns caller number -> terminal of every call placed.
    """
    import aiohttp

    base = f"{sim_url}/_sim/istra"
    placed: dict[str, str] = {}
    free = collections.deque(terminals)
    errors: collections.Counter = collections.Counter()
    progress["traffic_errors"] = errors

    async def call(session, number: str, terminal: str):
        try:
            async with session.post(f"{base}/calls/incoming", json={"terminalId": terminal, "from": number}) as r:
                call_id = (await r.json())["callId"]
            placed[number] = terminal
            await asyncio.sleep(args.call_seconds)
            async with session.post(f"{base}/calls/{call_id}/hangup", json={}) as r:
                await r.read()
                if r.status >= 400:
                    errors[f"hangup {r.status}"] += 1
        except Exception as exc:  # noqa: BLE001 - counted, the run goes on
            errors[type(exc).__name__] += 1
        finally:
            free.append(terminal)

    interval = 1.0 / args.rate
    pending = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < args.seconds:
            next_at = started + n * interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            if not free:
                errors["no free terminal"] += 1
                continue
            pending.append(asyncio.ensure_future(call(session, f"+3361{n:07d}", free.popleft())))
        await asyncio.gather(*pending)
    return placed


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text or "")


def _report(hub, args, placed: dict[str, str], depths: QueueDepths, cpu_seconds: list[float]) -> None:
    from ctihub.lib import metrics

    frames = _sim_get(hub, "/_sim/istra/frame-log")
    sent: dict[tuple[str, str], float] = {}
    for entry in frames:
        for item in entry["frame"].get("item", []):
            kind = {"callRinging": START, "callDropped": HANGUP}.get(item.get("event"))
            if kind:
                sent.setdefault((_digits(item.get("displayNumberE164") or item.get("displayNumber")), kind),
                                entry["time"])
    events = _sim_get(hub, "/_sim/retailcrm/events")
    received: dict[tuple[str, str], float] = {}
    duplicated = 0
    for entry in events:
        key = (_digits(entry["event"].get("phone")), entry["event"].get("type"))
        if key in received:
            duplicated += 1
        else:
            received[key] = entry["time"]
    expected = {(_digits(number), kind) for number in placed for kind in (START, HANGUP)}
    latencies = {START: [], HANGUP: []}
    for key in expected:
        if key in sent and key in received:
            latencies[key[1]].append((received[key] - sent[key]) * 1000)
    missing = len(expected - set(received))
    figure("rate", args.rate, "calls/s")
    figure("calls_placed", len(placed))
    figure("frames_timed", sum(1 for key in expected if key in sent))
    figure("events_expected", len(expected))
    figure("events_received", len(set(received) & expected))
    figure("events_missing", missing, "", "0")
    figure("events_duplicated", duplicated, "", "0")
    percentiles(latencies[START], "start_event_latency")
    percentiles(latencies[HANGUP], "hangup_event_latency")
    both = sorted(latencies[START] + latencies[HANGUP])
    if both:
        p99 = both[min(len(both) - 1, int(round(0.99 * (len(both) - 1))))]
        figure("event_latency_p99", p99, "ms", f"<= {args.target_p99_ms:.0f} ms")

    requests_log = _sim_get(hub, "/_sim/retailcrm/requests")
    telephony = sorted(r["time"] for r in requests_log if r["path"].startswith("/api/v5/telephony/"))
    uploads = sorted(r["time"] for r in requests_log if r["path"] == "/api/v5/telephony/calls/upload")
    if telephony:
        span = max(1.0, telephony[-1] - telephony[0])
        figure("telephony_requests", len(telephony))
        figure("telephony_requests_per_second_mean", len(telephony) / span, "req/s")
    # The simulated retailCRM counts its own busiest second, per API key, as it enforces its limit.
    stats = _sim_get(hub, "/_sim/retailcrm/stats")
    if telephony:
        figure("telephony_requests_max_in_any_second", stats["maxPerSecond"]["telephony"], "", "<= 40")
    figure("limit_errors_at_retailcrm", stats.get("rateLimited", 0), "", "0")
    figure("upload_requests", len(uploads))
    figure("calls_uploaded", len(_sim_get(hub, "/_sim/retailcrm/calls")))
    for priority, label in (("high", "call_events_and_lookups"), ("low", "uploads")):
        waits = metrics.crm_token_waits(priority)
        figure(f"token_wait_{label}_requests", int(waits["count"]))
        figure(f"token_wait_{label}_waited", int(waits["waited"]))
        figure(f"token_wait_{label}_mean_of_those_waiting", 1000 * waits["sum"] / waits["waited"] if waits["waited"]
               else 0.0, "ms")
        figure(f"token_wait_{label}_max", 1000 * waits["max"], "ms")
    for queue, deepest in depths.deepest.items():
        figure(f"celery_queue_{queue}_deepest", deepest, "tasks")
    # At the bucket: uploads that took a token while a call event waited for one (the bucket's own timeline).
    from ctihub.lib.shared_redis import shared_redis

    timeline = [e.decode() for e in shared_redis().lrange(_timeline_key(), 0, -1)]
    overtaking, waits = uploads_granted_while_an_event_waited(timeline)
    figure("call_event_waits_for_a_token", waits)
    figure("uploads_sent_while_a_start_event_waited", overtaking, "", "0")
    # Anywhere (frames, Celery queue, bucket): uploads that reached retailCRM while a start event whose frame
    # left --waiting-after s before had not. Not 0 when the workers are short of CPU: events then wait
    # before the bucket, where uploads do not compete with them.
    late = [(sent[key] + args.waiting_after, received.get(key, math.inf))
            for key in expected if key[1] == START and key in sent]
    figure("uploads_received_while_a_start_event_was_late", sum(1 for u in uploads if any(b < u < e for b, e in late)))
    events_count = len(set(received) & expected)
    if events_count:
        # CPU over the run per call event received: the socket worker (frames, its share of tasks, uploads,
        # idle sockets) and the call-events worker (the events' tasks and requests) apart.
        figure("workers_cpu_per_call_event", 1000 * sum(cpu_seconds) / events_count, "ms")
        figure("socket_worker_cpu_per_call_event", 1000 * cpu_seconds[0] / events_count, "ms")
        if len(cpu_seconds) > 1:
            figure("events_worker_cpu_per_call_event", 1000 * cpu_seconds[1] / events_count, "ms")


if __name__ == "__main__":
    from bench.common import run

    run(main)
