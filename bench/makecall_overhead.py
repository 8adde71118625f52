"""Benchmark 4: what ctihub's makeCallUrl adds on top of the PBX's own answer, and what it costs daphne.

    .venv/bin/python -m bench.makecall_overhead [--rate 200] [--seconds 10] [--rounds 2] [--processes 1]
    .venv/bin/python -m bench.makecall_overhead --sweep 100:800:50 --seconds 5 --processes 1,2

Real parts: the simulator (myRCC placeCall) and daphne on PostgreSQL and Redis, daphne run as in
production (``DEBUG=false``, ``WEB_POOL_THREADS`` from the environment or its default) with
``BENCH_FLOORS=true``, which also serves ``bench/floor_views.py``: a bare DRF view that parses
makeCallUrl's query with a serializer and answers JSON, through the same request handling
(``ctihub.lib.http_pool``) and middleware. Each daphne answers one click before any timing, so its
login to the PBX is not in the figures.

The default run sends, at the same rate from the same thread pool: placeCall straight to the
simulated PBX through ctihub's own Istra session (the PBX's own answer time), then, ``--rounds``
times in turn, the floor view and retailCRM's ``GET /api/retailcrm/make-call`` (which places the
same call). The overhead figures are the differences of the makeCallUrl and PBX percentiles. The
CPU figures are daphne's CPU time (all its processes) over each phase divided by its requests:
``floor_cpu_per_request``, ``makecall_cpu_per_request`` and their ratio
``makecall_cpu_ratio_to_floor``. Taken in the same run, in turns, the ratio depends far less on
what else the machine runs than the latencies do; and since the machine's speed drifts between
rounds (other work, a slower period), each round's floor and makeCallUrl are also compared with each
other: one line per round (``round_N_cpu_per_request``), ``makecall_cpu_ratio_rounds`` and their
median ``makecall_cpu_ratio_median`` (target <= 1.3), the figure to compare.

``--sweep START:STOP:STEP`` (or a list ``100,200,400``) steps the rate up for each process count of
``--processes`` (``WEB_PROCESSES`` of a fresh daphne each) and prints the highest rate at which
makeCallUrl's overhead p99 stays <= 20 ms with no error and the rate achieved
(``makecall_saturation_rate``); with two counts, ``makecall_saturation_ratio`` (the last count's
over the first's, target >= 1.7 for 2 over 1). With several daphne processes each run also prints
how the work spread over them (``web_children_cpu_share``, ``web_children_connections``).

``--floor-sweep START:STOP:STEP`` also steps the floor view up, on the same daphne after makeCallUrl,
against its own p99 (it asks no PBX): ``floor_saturation_rate`` per process count, and with two counts
``floor_saturation_ratio``, what the stack's own bare view gains from the second process on this
machine, its cores shared with the harness, beside makeCallUrl's ratio.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import queue
import re
import select
import socket
import statistics
import time

import requests
import urllib3

from bench.common import figure, no_pauses_of_our_own, percentiles, progress, setup_django

AGENT_EXTENSION = "897778778"
OVERHEAD_P99_TARGET_MS = 20.0
CPU_RATIO_TARGET = 1.3
SATURATION_RATIO_TARGET = 1.7
# Threads of the load generator: requests in flight at most.
SENDERS = 64
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)
# Keep-alive connections of the warm-up (``requests``' pool, threads).
WARM_CONNECTIONS = 16
# Keep-alive connections the load generator opens before the timing, as many to each daphne process: all it
# may use (``SENDERS``). It opened more only when all were busy, i.e. when requests were already late: each
# new one a blocking connect in its only thread and an accept by a busy daphne process (one per millisecond),
# on the requests that were late, and at 425 req/s 16 became 48 in the first second of a step.
OPEN_CONNECTIONS = SENDERS
# h2load processes (one connection each) of a step: steady arrivals, spread over the daphne processes.
H2LOAD_CONNECTIONS = 8


def timed_run(rate: float, seconds: float, send, label: str = "") -> tuple[list[float], int, float]:
    """Send ``rate`` requests a second for ``seconds``: (latencies in ms, errors, rate achieved)."""
    latencies, errors = [], 0
    interval, total = 1.0 / rate, max(1, int(rate * seconds))

    def one():
        t0 = time.perf_counter()
        try:
            ok = send()
        except Exception:  # noqa: BLE001 - a refused or timed-out request counts as an error, not a crash
            ok = False
        return (time.perf_counter() - t0) * 1000, ok

    with no_pauses_of_our_own(), concurrent.futures.ThreadPoolExecutor(max_workers=SENDERS) as pool:
        start = time.perf_counter()
        futures = []
        for n in range(total):
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one))
        for future in futures:
            ms, ok = future.result()
            latencies.append(ms)
            errors += not ok
        achieved = total / (time.perf_counter() - start)
    if label:
        figure(f"{label}_achieved_rate", achieved, "req/s")
    return latencies, errors, achieved


def click_world(sim_url: str, pbx_url: str | None = None):
    """The world every makeCallUrl benchmark clicks in: a myRCC account on the simulator, agent ann
    (code 101, retailCRM user 7) on its extension, and a retailCRM integration. Returns (account, integration)."""
    from django.contrib.auth import get_user_model

    from accounts.models import Agent
    from crm_sync.models import RetailCrmIntegration
    from telephony import control
    from telephony.models import PbxAccount, Terminal
    from tests.support.sim_control import IstraControl

    sim = IstraControl(sim_url)
    sim.add_user("rccadmin", "s3cret", enterprise="acme", myrcc=True)
    sim.add_extension(AGENT_EXTENSION, "101", enterprise="acme", myrcc=True)
    account = PbxAccount.objects.create(name="bench", kind=PbxAccount.Kind.ISTRA_MYRCC, enterprise="acme",
                                        base_url=f"{pbx_url or sim_url}/restletrouter", login="rccadmin", password="s3cret")
    control.sync_terminals(account)
    agent = Agent.objects.create(user=get_user_model().objects.create_user("ann"), extension_code="101",
                                 retailcrm_user_id="7")
    Terminal.objects.filter(account=account, pbx_id=AGENT_EXTENSION).update(agent=agent)
    integration = RetailCrmIntegration.objects.create(name="bench", crm_url=sim_url, api_key="k" * 32)
    return account, integration


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def parse_rates(text: str) -> list[float]:
    if ":" in text:
        start, stop, step = (float(part) for part in text.split(":"))
        rates, rate = [], start
        while rate <= stop + 1e-9:
            rates.append(rate)
            rate += step
        return rates
    return [float(part) for part in text.split(",") if part]


class Web:
    """One daphne (``WEB_PROCESSES`` processes) of the benchmark, and its CPU and connections."""

    def __init__(self, hub_env, processes: int):
        from bench.procs import BenchHub

        self.processes = processes
        self.hub = BenchHub(hub_env(LISTENER_SUPERVISOR="false", PUBLIC_RATE_LIMIT_PER_SECOND="100000",
                                    DEBUG="false", BENCH_FLOORS="true", WEB_PROCESSES=str(processes)))
        self.managed = self.hub.start_web()
        self.url = self.hub.web_url
        if processes > 1:
            self.wait_until_every_child_accepts()

    def wait_until_every_child_accepts(self) -> None:
        """/healthz answered by one child says nothing of the others, still loading Django maybe: a burst
        opened then went to the first one."""
        import socket

        from tests.support.processes import wait_for

        port = int(self.url.rsplit(":", 1)[1])

        def every_child_accepts() -> bool:
            held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4 * self.processes)]
            try:
                time.sleep(0.3)
                return all(self.connections_by_child())
            finally:
                for sock in held:
                    sock.close()

        wait_for(lambda: len(self.children()) == self.processes and every_child_accepts(), 60, interval=0.5,
                 what=f"{self.processes} daphne processes accepting")

    def stop(self) -> None:
        self.hub.stop()

    def cpu_seconds(self) -> float:
        from bench.procs import web_cpu_seconds

        return web_cpu_seconds(self.managed)

    def children(self):
        import psutil

        root = psutil.Process(self.managed.process.pid)
        return root.children() if self.processes > 1 else [root]

    def cpu_by_child(self) -> list[float]:
        return [sum(child.cpu_times()[:2]) for child in self.children()]

    def kernel_and_switches(self) -> tuple[float, int, float]:
        """The serving processes' system CPU seconds, voluntary context switches of all their threads (each
        one a thread that slept: waiting on a socket, a lock, the pool's queue) and the seconds their threads
        were runnable but waited for a core (``schedstat``), so far."""
        system, switches = 0.0, 0
        for child in self.children():
            try:
                system += child.cpu_times().system
                for task in os.listdir(f"/proc/{child.pid}/task"):
                    with open(f"/proc/{child.pid}/task/{task}/status") as status:
                        for line in status:
                            if line.startswith("voluntary_ctxt_switches:"):
                                switches += int(line.split()[1])
            except OSError:  # a thread gone meanwhile: its switches are not counted
                continue
        return system, switches, run_queue_seconds([child.pid for child in self.children()])

    def local_ports_by_child(self) -> list[set[int]]:
        """For each daphne process, the client-side ports of the connections it holds."""
        port = int(self.url.rsplit(":", 1)[1])
        return [{c.raddr.port for c in child.net_connections(kind="tcp")
                 if c.status == "ESTABLISHED" and c.laddr and c.laddr.port == port and c.raddr}
                for child in self.children()]

    def connections_by_child(self) -> list[int]:
        port = int(self.url.rsplit(":", 1)[1])
        return [sum(1 for c in child.net_connections(kind="tcp")
                    if c.status == "ESTABLISHED" and c.laddr and c.laddr.port == port)
                for child in self.children()]


def run_queue_seconds(pids: list[int]) -> float:
    """Seconds the threads of ``pids`` spent runnable, waiting for a core (``/proc/PID/task/TID/schedstat``'s
    second field; 0 where the kernel keeps no schedstats). On two cores shared by the daphne processes, the
    PBX side, Redis and this load generator, a request crosses ~10 thread wake-ups; each may wait here."""
    waited = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                    waited += int(stat.read().split()[1])
            except (OSError, IndexError, ValueError):  # a thread gone meanwhile, or no schedstats
                continue
    return waited / 1e9


class InTurn(queue.Queue):
    """A connection pool's queue that hands out its idle connections oldest first, and a new one (None)
    only when none is idle: as many connections as requests in flight at most, each carrying its share."""

    def _get(self):
        for n, connection in enumerate(self.queue):
            if connection is not None:
                del self.queue[n]
                return connection
        return self.queue.popleft()


class RotatingPool(urllib3.HTTPConnectionPool):
    """Keep-alive connections used in turn. urllib3 reuses the last one returned, so at a steady rate a
    couple of connections carried every request; with several daphne processes each connection stays with
    the child that accepted it, and 93% of the requests went to one child."""

    QueueCls = InTurn


class Load:
    """What the benchmark sends: placeCall to the PBX, the floor view and makeCallUrl."""

    def __init__(self, provider, client_id: str):
        self.provider = provider
        self.http = requests.Session()
        self.http.trust_env = False  # the load generator's own CPU: no proxy look-up from the environment per request
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=SENDERS)
        adapter.poolmanager.pool_classes_by_scheme = {**adapter.poolmanager.pool_classes_by_scheme,
                                                      "http": RotatingPool}
        self.http.mount("http://", adapter)
        self.query = f"clientId={client_id}&code=101&phone=%2B33612345678&userId=7"

    def pbx(self) -> bool:
        return self.provider.place_call(AGENT_EXTENSION, "+33612345678") is not None

    def get(self, url: str) -> bool:
        return self.http.get(url, timeout=10).status_code == 200

    def floor_target(self) -> str:
        return f"/api/bench-floor/make-call?{self.query}"

    def makecall_target(self) -> str:
        return f"/api/retailcrm/make-call?{self.query}"

    def floor_url(self, web: Web) -> str:
        return web.url + self.floor_target()

    def makecall_url(self, web: Web) -> str:
        return web.url + self.makecall_target()

    def warm_up(self, web: Web) -> None:
        # Every daphne process logs in to the PBX and loads its caches before the timing: a few rounds of
        # WARM_CONNECTIONS requests at once. Their connections, opened at once while every process is idle,
        # spread over the processes and are the ones the timed runs use in turn.
        with concurrent.futures.ThreadPoolExecutor(max_workers=WARM_CONNECTIONS) as pool:
            for url in (self.floor_url(web), self.makecall_url(web)):
                for _ in range(3 * web.processes):
                    answers = list(pool.map(lambda _n: self.http.get(url, timeout=30), range(WARM_CONNECTIONS)))
                    bad = [a for a in answers if a.status_code != 200]
                    assert not bad, f"warm-up of {url.split('?')[0]}: {bad[0].status_code} {bad[0].text[:200]}"
        self.http.close()  # the timed runs open their own connections (RawLoad): these would only linger


class RawConnection:
    """One keep-alive connection of the load generator: a request written as bytes built once, its answer
    framed by Content-Length (daphne always sends one for these views)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.started = 0.0
        self.closed = False
        self.child = -1  # which daphne process accepted it (RawLoad.open), -1 not known

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


class RawLoad:
    """The load generator: keep-alive HTTP/1.1 connections on one thread's ``epoll``, requests built once.

    Threads of ``requests`` cost this process ~0.5 ms of CPU a request near the top rates, an asyncio loop
    0.12-0.37 ms, on the same two cores as the daphne processes it measures; this is a plain ``epoll`` loop
    (its CPU is printed at every step as ``load generator``). Its connections are all opened before the
    timing (``open``, ``OPEN_CONNECTIONS``) and used oldest first; during a run one opens only to replace
    one the server closed. A request due while every connection is busy waits here and is timed from
    when it was due, not from when it could be sent: its wait is part of its latency.
    """

    def __init__(self, web_url: str):
        host, port = web_url.split("//", 1)[1].split(":")
        self.host, self.port = host, int(port)
        self.epoll = select.epoll()
        self.by_fd: dict[int, RawConnection] = {}
        self.idle: collections.deque[RawConnection] = collections.deque()
        self.connections: list[RawConnection] = []
        self.waiting: collections.deque[float] = collections.deque()  # due times of requests with no connection
        self.late = 0  # requests of the run that waited for a connection
        self.request = b""
        self.latencies: list[float] = []
        self.samples: list[tuple[float, float, int]] = []  # (sent, ms, daphne process) of each answer
        self.errors = 0
        self.completed = 0
        self.opened_during_run = 0
        self.opened = 0  # connections open() left open: one the server closes is replaced, no more opened

    def build(self, target: str) -> bytes:
        return (f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: */*\r\n"
                f"User-Agent: ctihub-bench\r\n\r\n").encode()

    def _open(self) -> RawConnection:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = RawConnection(sock)
        self.by_fd[sock.fileno()] = connection
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.connections.append(connection)
        return connection

    def _drop(self, connection: RawConnection) -> None:
        if not connection.closed:
            self.by_fd.pop(connection.sock.fileno(), None)
            self.epoll.unregister(connection.sock.fileno())
            connection.close()

    def open(self, count: int, web: Web) -> None:
        """``count`` connections, as many to each daphne process (``web``): each stays with the process that
        accepted it, and a burst opened at once split 4 / 12 when one process was scheduled late. Opened in
        bursts while every process is idle; those beyond a process's share are closed again. Kept in turns
        of the processes (used oldest first, consecutive requests go to one process, then the other)."""
        share = count // web.processes
        for _attempt in range(10):
            opened = [self._open() for _ in range(count)]
            self.idle.extend(opened)
            time.sleep(0.2)  # every process has accepted what it will
            by_child = web.local_ports_by_child()
            kept: list[list[RawConnection]] = [[] for _ in range(web.processes)]
            for connection in self.idle:
                port = connection.sock.getsockname()[1]
                child = next((n for n, ports in enumerate(by_child) if port in ports), None)
                if child is not None and len(kept[child]) < share:
                    connection.child = child
                    kept[child].append(connection)
                else:
                    self._drop(connection)
            self.idle = collections.deque(c for turn in zip(*kept) for c in turn)
            self.connections = list(self.idle)
            if len(self.idle) >= share * web.processes:
                break
            self.idle.extend(c for own in kept for c in own[min(map(len, kept)):])  # the uneven rest, kept
            self.connections = list(self.idle)
        self.opened = len(self.connections)
        time.sleep(0.05)

    def close(self) -> None:
        for connection in self.connections:
            self._drop(connection)
        self.epoll.close()

    def _send(self, connection: RawConnection, due: float | None = None) -> None:
        connection.started = time.perf_counter() if due is None else due
        try:
            sent = connection.sock.send(self.request)
        except OSError:
            sent = -1
        if sent != len(self.request):  # a request of ~200 bytes on an idle connection: all of it, or broken
            connection.started = 0.0
            self._drop(connection)
            self._done(ok=False)

    def _dispatch(self) -> None:
        while self.idle and self.idle[0].closed:
            self.idle.popleft()
        if self.idle:
            self._send(self.idle.popleft())
        elif sum(not c.closed for c in self.connections) < self.opened:  # one the server closed: replaced
            try:
                self.opened_during_run += 1
                self._send(self._open())
            except OSError:
                self._done(ok=False)
        else:
            self.waiting.append(time.perf_counter())
            self.late += 1

    def _readable(self, connection: RawConnection) -> None:
        try:
            data = connection.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            started = connection.started
            self._drop(connection)
            if started:
                self._answered(connection, ok=False)
            return
        buffer = connection.buffer = connection.buffer + data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        found = _CONTENT_LENGTH.search(buffer, 0, end)
        if found is None:  # chunked or no framing: not what these views send
            self._drop(connection)
            self._answered(connection, ok=False)
            return
        whole = end + 4 + int(found.group(1))
        if len(buffer) < whole:
            return
        connection.buffer = buffer[whole:]
        self._answered(connection, ok=buffer[9:12] == b"200")

    def _answered(self, connection: RawConnection, ok: bool) -> None:
        ms = (time.perf_counter() - connection.started) * 1000
        self.latencies.append(ms)
        self.samples.append((connection.started, ms, connection.child))
        connection.started = 0.0
        self._done(ok)
        if not connection.closed:
            if self.waiting:
                self._send(connection, self.waiting.popleft())
            else:
                self.idle.append(connection)

    def _done(self, ok: bool) -> None:
        self.errors += not ok
        self.completed += 1

    def run(self, target: str, rate: float, seconds: float) -> tuple[list[float], int, float]:
        """``rate`` requests a second for ``seconds``: (latencies in ms, errors, rate achieved)."""
        self.request = self.build(target)
        self.latencies, self.samples, self.errors, self.completed = [], [], 0, 0
        self.waiting, self.late, self.opened_during_run = collections.deque(), 0, 0
        total = max(1, int(rate * seconds))
        poll, by_fd = self.epoll.poll, self.by_fd
        start = self.started = time.perf_counter()
        sent, deadline = 0, None
        while self.completed < total:
            now = time.perf_counter()
            if sent < total:
                due = min(total, int((now - start) * rate) + 1)
                while sent < due:
                    self._dispatch()
                    sent += 1
                timeout = max(0.0, start + sent / rate - now) if sent < total else 0.0
                if sent == total:
                    deadline = time.perf_counter() + 30
            else:
                timeout = deadline - now
                if timeout <= 0:  # answers still missing: errors; their connections are not reused
                    for connection in list(self.connections):
                        if connection.started and not connection.closed:
                            connection.started = 0.0
                            self._drop(connection)
                    break
            for fd, _events in poll(timeout):
                connection = by_fd.get(fd)
                if connection is not None:
                    self._readable(connection)
        achieved = total / (time.perf_counter() - start)  # the last answer in, as before
        missing = total - self.completed
        return self.latencies, self.errors + missing, achieved


class H2Load:
    """The load generator when ``h2load`` (Debian's ``nghttp2-client``) is installed: C, ~0.02 ms of CPU a
    request against ~0.10 for ``RawLoad``'s Python, on the same two cores as the daphne processes measured.

    One ``h2load`` sends all its connections' requests at the same instant (its ``--rps`` timers start
    together: bursts of ``-c`` requests), which is not the steady arrival this benchmark times. So each
    step runs ``H2LOAD_CONNECTIONS`` ``h2load`` processes of one keep-alive HTTP/1.1 connection each,
    ``rate / H2LOAD_CONNECTIONS`` requests a second each (``--rps``, ``-D``), started ``1 / rate`` apart:
    their requests interleave. A request its connection could not send on time waits for it and is timed
    from when it is sent, as ``RawLoad`` times those waiting for a connection. Latencies come from their
    ``--log-file`` (start, status, microseconds to the end of the answer); their CPU (``wait4``'s rusage,
    start-up included) is added to the step's ``load generator`` figure; the spread of their connections
    over the daphne processes is read mid-step. Not the default: those connections, opened afresh each
    step, split unevenly over several daphne processes (2 / 6 and 1 / 7 at 350-375 req/s: a busy process
    accepts later), so with ``--processes 2`` one process saturates early (``--generator h2load``).
    """

    def __init__(self, web: Web):
        import tempfile

        self.web = web
        self.directory = tempfile.mkdtemp(prefix="makecall-h2load-")
        self.child_cpu = 0.0
        self.spread: list[int] | None = None
        self.connections = H2LOAD_CONNECTIONS

    def open(self, count: int, web: Web) -> None:
        self.connections = max(H2LOAD_CONNECTIONS, web.processes)  # each h2load opens its own, every step

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)

    def run(self, target: str, rate: float, seconds: float) -> tuple[list[float], int, float]:
        import subprocess
        import threading

        logs = [os.path.join(self.directory, f"requests-{n}.log") for n in range(self.connections)]
        for log in logs:
            if os.path.exists(log):
                os.remove(log)  # h2load appends
        def spawn(log: str) -> subprocess.Popen:
            return subprocess.Popen(
                ["h2load", "--h1", "-c", "1", f"--rps={rate / self.connections:.6f}",
                 "-D", f"{max(1, round(seconds * 1000))}ms", "--log-file", log, "-H", "user-agent: ctihub-bench",
                 self.web.url + target], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        processes = []
        started = time.perf_counter()
        for n, log in enumerate(logs):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            processes.append(spawn(log))
        self.child_cpu, self.sampling_cpu = 0.0, 0.0

        def sample() -> None:
            # Reading every socket of the machine (psutil) is the benchmark's looking, not load: not counted.
            begun = time.thread_time()
            self.spread = self.web.connections_by_child()
            self.sampling_cpu = time.thread_time() - begun

        sampler = threading.Timer(min(1.0, seconds / 2), sample)
        sampler.start()
        latencies, errors = [], 0
        statuses: collections.Counter = collections.Counter()
        for process, log in zip(processes, logs):
            output = process.stdout.read()
            _pid, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            self.child_cpu += usage.ru_utime + usage.ru_stime
            answered = 0
            try:
                with open(log) as lines:
                    for line in lines:
                        parts = line.split("\t")
                        if len(parts) >= 3:
                            answered += 1
                            latencies.append(int(parts[2]) / 1000)
                            errors += parts[1] != "200"
                            statuses[parts[1]] += 1
            except FileNotFoundError:
                pass
            counts = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", output)
            if process.returncode != 0 or counts is None:
                print(f"# h2load exited {process.returncode}: {output[-600:]}", flush=True)
                errors += max(1, int(rate * seconds / self.connections) - answered)
            else:
                # Failed and timed out; one still in flight when the step's time was up is neither (nor logged).
                errors += int(counts[2]) + int(counts[4])
        sampler.join()
        if errors:
            print(f"# h2load: answers by status {dict(statuses)}, errors {errors}", flush=True)
        return latencies, errors, len(latencies) / seconds


def make_generator(kind: str, web: Web):
    """The load generator of ``--generator``: ``RawLoad`` or h2load."""
    import shutil

    if kind == "h2load":
        if not shutil.which("h2load"):
            raise SystemExit("--generator h2load: h2load is not installed (apt-get install -y nghttp2-client)")
        return H2Load(web)
    return RawLoad(web.url)


def describe_generator(kind: str) -> None:

    if kind == "h2load":
        print(f"# load generator: h2load (nghttp2-client): {H2LOAD_CONNECTIONS} processes of one HTTP/1.1 keep-alive "
              f"connection each, started 1/rate apart", flush=True)
    else:
        print("# load generator: this process's epoll loop (RawLoad; --generator h2load for the cheaper one)",
              flush=True)


class Others:
    """The processes beside daphne whose CPU a step reports: the PBX side, this load generator, Redis."""

    def __init__(self, pbx_pids: list[int], simulator_pid: int | None = None):
        import psutil

        self.processes = {"pbx": [psutil.Process(pid) for pid in pbx_pids if pid != simulator_pid],
                          "load generator": [psutil.Process()]}
        if simulator_pid in pbx_pids and len(pbx_pids) > 1:  # its own line: idle but for logins, its timers
            self.processes["simulator"] = [psutil.Process(simulator_pid)]
        redis = [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("redis-server")]
        if redis:
            self.processes["redis (shared with others)"] = redis[:1]

    def cpu(self) -> dict[str, float]:
        import psutil

        machine = psutil.cpu_times()
        found = {"machine": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)}
        for name, processes in self.processes.items():
            try:
                found[name] = sum(sum(p.cpu_times()[:2]) for p in processes)
            except Exception:  # noqa: BLE001 - a process gone or not ours to read: no figure, not a failure
                found[name] = float("nan")
        found["queued"] = run_queue_seconds([p.pid for name, processes in self.processes.items()
                                             if name != "simulator" for p in processes])
        return found


def measured(web: Web, raw: RawLoad | H2Load, target: str, rate: float, seconds: float, label: str,
             others: Others) -> dict:
    """One timed run against ``web``: latencies, errors, CPU per request of daphne and of every other process."""
    with no_pauses_of_our_own():  # its collection before the CPU figures start
        cpu_before, children_before, others_before = web.cpu_seconds(), web.cpu_by_child(), others.cpu()
        kernel_before = web.kernel_and_switches()
        started = time.perf_counter()
        latencies, errors, achieved = raw.run(target, rate, seconds)
        wall = time.perf_counter() - started
        cpu = web.cpu_seconds() - cpu_before
        children = [after - before for after, before in zip(web.cpu_by_child(), children_before)]
        other_cpu = {name: after - others_before[name] for name, after in others.cpu().items()}
        # h2load's own processes, less this process's reading of the connections meanwhile
        other_cpu["load generator"] += getattr(raw, "child_cpu", 0.0) - getattr(raw, "sampling_cpu", 0.0)
        kernel = [after - before for after, before in zip(web.kernel_and_switches(), kernel_before)]
    progress[f"{label}_requests"] = int(progress.get(f"{label}_requests", 0)) + len(latencies)
    connections = getattr(raw, "spread", None) or web.connections_by_child()
    return {"latencies": latencies, "errors": errors, "achieved": achieved, "cpu": cpu, "children": children,
            "connections": connections, "others": other_cpu, "wall": wall,
            "web_system": kernel[0], "web_sleeps": kernel[1], "web_queued": kernel[2],
            # RawLoad's own: each answer's (sent, ms, process), when the run began, the requests that waited
            # for a connection and the connections it had to open meanwhile (the server closed one)
            "samples": getattr(raw, "samples", None), "began": getattr(raw, "started", 0.0),
            "late": getattr(raw, "late", 0), "opened": getattr(raw, "opened_during_run", 0)}


def tail_line(run: dict, limit_ms: float) -> str:
    """Where a run's requests over ``limit_ms`` were: on which daphne process, in which second of the run, and
    whether the load generator had no idle connection for them: a warm-up, one process or the harness."""
    samples = run.get("samples")
    if samples is None:
        return f"over {limit_ms:.1f} ms: not traced with this load generator"
    slow = [(sent - run["began"], child) for sent, ms, child in samples if ms > limit_ms]
    by_child = collections.Counter(child for _sent, child in slow)
    children = sorted({child for _sent, _ms, child in samples})
    seconds = max(1, int(run["wall"] + 0.999))
    by_second = collections.Counter(min(seconds - 1, int(sent)) for sent, _child in slow)
    return (f"{len(slow)} of {len(samples)} requests over {limit_ms:.1f} ms (PBX p99 + target): "
            + " / ".join(f"{by_child[c]}" for c in children) + " on each process, "
            + " / ".join(str(by_second[n]) for n in range(seconds)) + " in each second of the run; "
            f"{run['late']} waited for an idle connection, {run['opened']} opened during the run")


def cpu_line(run: dict) -> str:
    """Each process's CPU per request and how much of a core it used: a saturation names its process."""
    requests_done = max(1, len(run["latencies"]))
    wall = run["wall"]
    children = " + ".join(f"{c * 1000 / requests_done:.2f}" for c in run["children"])
    busy = " + ".join(f"{c / wall:.2f}" for c in run["children"])
    parts = [f"web {children} ms/request ({busy} cores; kernel {run['web_system'] * 1000 / requests_done:.2f} ms, "
             f"{run['web_sleeps'] / requests_done:.1f} thread sleeps a request, "
             f"{run['web_queued'] * 1000 / requests_done:.2f} ms waiting for a core a request)"]
    harness = 0.0
    for name, seconds in run["others"].items():
        if name in ("machine", "queued"):
            continue
        harness += seconds
        parts.append(f"{name} {seconds * 1000 / requests_done:.2f} ms/request ({seconds / wall:.2f} cores)")
    # What the benchmark's own side (PBX, load generator, Redis) takes from the cores daphne runs on.
    parts.append(f"harness {harness * 1000 / requests_done:.2f} ms/request ({harness / wall:.2f} cores; "
                 f"{run['others']['queued'] * 1000 / requests_done:.2f} ms waiting for a core a request)")
    cores = os.cpu_count() or 1
    parts.append(f"web processes got {100 * sum(run['children']) / (cores * wall):.0f}% of {cores} cores, "
                 f"the whole machine was {100 * run['others']['machine'] / (cores * wall):.0f}% busy "
                 f"(other work on it: the rest)")
    return ", ".join(parts)


def print_spread(name: str, children: list[float], connections: list[int]) -> None:
    total = sum(children) or 1.0
    figure(f"{name}web_children_cpu_share", " / ".join(f"{100 * c / total:.0f}" for c in children), "%")
    figure(f"{name}web_children_connections", " / ".join(str(n) for n in connections))


def cost_run(args, hub_env, load: Load, processes: int, direct: list[float], name: str, others: Others) -> int:
    """The default run for one process count: floor and makeCallUrl in turns at ``--rate``; its errors."""
    web = Web(hub_env, processes)
    raw = None
    try:
        load.warm_up(web)
        raw = make_generator(args.generator, web)
        raw.open(OPEN_CONNECTIONS, web)
        floor = {"latencies": [], "errors": 0, "cpu": 0.0, "children": [0.0] * processes}
        makecall = {"latencies": [], "errors": 0, "cpu": 0.0, "children": [0.0] * processes}
        per_round = args.seconds / args.rounds
        ratios = []
        for n in range(args.rounds):
            per_request = {}
            for label, totals, target in (("floor", floor, load.floor_target()),
                                          ("makecall", makecall, load.makecall_target())):
                print(f"# round {n + 1}/{args.rounds}: {label}, {processes} web process(es)", flush=True)
                run = measured(web, raw, target, args.rate, per_round, label, others)
                figure(f"{name}{label}_achieved_rate", run["achieved"], "req/s")
                print(f"# {label} cpu: {cpu_line(run)}", flush=True)
                per_request[label] = run["cpu"] * 1000 / max(1, len(run["latencies"]))
                totals["latencies"] += run["latencies"]
                totals["errors"] += run["errors"]
                totals["cpu"] += run["cpu"]
                totals["children"] = [a + b for a, b in zip(totals["children"], run["children"])]
                totals["connections"] = run["connections"]
            # The floor and makeCallUrl of one round ran seconds apart: a change of the machine's speed (other
            # work, a slower period) between rounds moves both; the ratio of each round is what it measures.
            ratios.append(per_request["makecall"] / per_request["floor"] if per_request["floor"] else float("nan"))
            print(f"{name}round_{n + 1}_cpu_per_request: floor {per_request['floor']:.2f} ms, makecall "
                  f"{per_request['makecall']:.2f} ms, ratio {ratios[-1]:.2f}, load {os.getloadavg()[0]:.1f}",
                  flush=True)
        figure("load_average_1min", os.getloadavg()[0])
    finally:
        if raw is not None:
            raw.close()
        web.stop()
    percentiles(floor["latencies"], f"{name}floor")
    percentiles(makecall["latencies"], f"{name}makecall")
    floor_cpu = floor["cpu"] * 1000 / len(floor["latencies"])
    makecall_cpu = makecall["cpu"] * 1000 / len(makecall["latencies"])
    figure(f"{name}floor_cpu_per_request", floor_cpu, "ms")
    figure(f"{name}makecall_cpu_per_request", makecall_cpu, "ms")
    figure(f"{name}makecall_cpu_ratio_to_floor", makecall_cpu / floor_cpu, "", "all rounds' CPU over all rounds'")
    figure(f"{name}makecall_cpu_ratio_rounds", " ".join(f"{r:.2f}" for r in ratios))
    figure(f"{name}makecall_cpu_ratio_median", statistics.median(ratios), "",
           f"<= {CPU_RATIO_TARGET}, the median of {len(ratios)} rounds' ratios")
    if processes > 1:
        print_spread(f"{name}makecall_", makecall["children"], makecall["connections"])
    errors = floor["errors"] + makecall["errors"]
    figure(f"{name}errors_through_ctihub", errors)
    figure(f"{name}overhead_p50", pct(makecall["latencies"], 50) - pct(direct, 50), "ms")
    figure(f"{name}overhead_p99", pct(makecall["latencies"], 99) - pct(direct, 99), "ms",
           f"<= {OVERHEAD_P99_TARGET_MS:.0f}")
    return errors


def print_step(name: str, rate: float, run: dict, overhead_p99: float, ok: bool, processes: int,
               limit_ms: float, kind: str = "sweep", measure: str = "overhead_p99") -> None:
    spread = ""
    if processes > 1:
        total = sum(run["children"]) or 1.0
        spread = (", cpu share " + " / ".join(f"{100 * c / total:.0f}%" for c in run["children"])
                  + ", connections " + " / ".join(str(n) for n in run["connections"]))
    print(f"{name}{kind}_{rate:g}: {measure} {overhead_p99:.1f} ms, p50 {pct(run['latencies'], 50):.1f} ms, "
          f"achieved {run['achieved']:.0f} req/s, errors {run['errors']}, "
          f"cpu {run['cpu'] * 1000 / max(1, len(run['latencies'])):.2f} ms/request{spread}, "
          f"load {os.getloadavg()[0]:.1f}, {'ok' if ok else 'over'}", flush=True)
    print(f"{name}{kind}_{rate:g}_cpu: {cpu_line(run)}", flush=True)
    print(f"{name}{kind}_{rate:g}_tail: {tail_line(run, limit_ms)}", flush=True)


def step_through(args, name: str, kind: str, web: Web, raw, target: str, rates: list[float], reference_p99,
                 processes: int, others: Others) -> float:
    """Step ``target``'s rate up through ``rates`` on ``web``: the highest rate at which its p99 less
    ``reference_p99(rate)`` (the PBX's own p99 for makeCallUrl, 0 for the floor) stays <= 20 ms, without
    error, the rate achieved. A step over the target is run again ``--step-retries`` times first."""
    best = 0.0
    measure = "overhead_p99" if kind == "sweep" else "p99"
    for rate in rates:
        reference = reference_p99(rate)
        if args.step_warmup > 0:
            # Not timed: daphne idled while placeCall went straight to the PBX; a step measures the rate held.
            raw.run(target, rate, args.step_warmup)
        for attempt in range(1 + args.step_retries):
            if attempt:
                print(f"{name}{kind}_{rate:g}: once more (a step over the target is run again "
                      f"{args.step_retries} time(s) before the sweep stops: other work on the machine)", flush=True)
            run = measured(web, raw, target, rate, args.seconds, "makecall" if kind == "sweep" else "floor", others)
            over_reference = pct(run["latencies"], 99) - reference
            ok = (over_reference <= OVERHEAD_P99_TARGET_MS and run["errors"] == 0
                  and run["achieved"] >= 0.95 * rate)
            print_step(name, rate, run, over_reference, ok, processes, reference + OVERHEAD_P99_TARGET_MS,
                       kind, measure)
            if ok:
                break
        if not ok:
            break
        best = rate
    return best


def sweep(args, hub_env, load: Load, processes: int, direct_at, name: str, others: Others) -> tuple[float, float]:
    """The highest rate of ``--sweep`` at which makeCallUrl's overhead p99 is <= 20 ms, without error, rate
    achieved; then, with ``--floor-sweep``, the same of the floor view's own p99 on the same daphne (else 0)."""
    web = Web(hub_env, processes)
    best = floor_best = 0.0
    raw = None
    try:
        load.warm_up(web)
        raw = make_generator(args.generator, web)
        raw.open(OPEN_CONNECTIONS, web)
        best = step_through(args, name, "sweep", web, raw, load.makecall_target(), parse_rates(args.sweep),
                            lambda rate: pct(direct_at(rate), 99), processes, others)
        if args.floor_sweep:
            # The bare DRF view asks no PBX and no Redis: its own p99 against the same 20 ms, on the same
            # processes and cores, is what the stack itself holds with this many processes on this machine.
            floor_best = step_through(args, name, "floor_sweep", web, raw, load.floor_target(),
                                      parse_rates(args.floor_sweep), lambda rate: 0.0, processes, others)
    finally:
        if raw is not None:
            raw.close()
        web.stop()
    figure(f"{name}makecall_saturation_rate", best, "req/s")
    if args.floor_sweep:
        figure(f"{name}floor_saturation_rate", floor_best, "req/s")
    return best, floor_best


def start_pbx(sim_hub, kind: str):
    """The PBX the benchmark's daphne and its straight placeCall talk to: (its URL, its pids, a stats reader)."""
    import json
    import sys

    from tests.support.processes import ManagedProcess, free_port, http_ok, wait_for

    if kind == "simulator":
        return sim_hub.sim_url, [sim_hub.processes[0].process.pid], None
    port = free_port()
    responder = ManagedProcess(f"pbx-responder-{port}", [sys.executable, "-m", "bench.pbx_responder", "--port",
                                                          str(port), "--upstream", sim_hub.sim_url],
                               dict(os.environ, PYTHONUNBUFFERED="1"))
    sim_hub.processes.append(responder)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{url}/_sim/health"), 30, what="the PBX responder")

    def stats() -> dict:
        return json.loads(requests.get(f"{url}/_responder/stats", timeout=10).text)

    return url, [responder.process.pid, sim_hub.processes[0].process.pid], stats


_NGINX_CONF = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  log_format placed "1";
  server {{
    listen 127.0.0.1:{port} backlog=512;
    location ~ /placeCall$ {{
      default_type "{content_type}";
      if ($request_method = POST) {{
        access_log {dir}/placed.log placed buffer=64k flush=1s;
{headers}        return {status} '{body}';
      }}
      proxy_pass {upstream};
    }}
    location / {{ proxy_pass {upstream}; }}
  }}
}}
"""
# Headers nginx writes itself (or that frame the answer): not copied from the simulator's answer.
_NGINX_OWN = {"content-type", "content-length", "date", "server", "connection", "keep-alive", "transfer-encoding"}


def _nginx_quoted(text: str) -> str | None:
    """``text`` in nginx's single quotes, or None if it has a ``$`` (nginx would read a variable)."""
    if "$" in text:
        return None
    return text.replace("\\", "\\\\").replace("'", "\\'")


def start_nginx(sim_hub, answer: dict):
    """nginx in front of the simulator, answering every myRCC placeCall (POST) with ``answer`` (the simulator's
    own, as bench/pbx_responder.py recorded it): (URL, its pids, a count of placeCall answered), or None with
    the reason printed. Debian's ``nginx-light`` (or any nginx on PATH); the benchmark does not install it."""
    import shutil
    import tempfile
    import time as time_module

    import psutil

    from tests.support.processes import ManagedProcess, free_port, http_ok, wait_for

    binary = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if not binary:
        print("# PBX: nginx not installed (apt-get install -y nginx-light for the cheaper PBX side): "
              "bench/pbx_responder.py answers", flush=True)
        return None
    body = _nginx_quoted(answer["body"])
    headers = [(name, _nginx_quoted(value)) for name, value in answer.get("headers", [])
               if name.lower() not in _NGINX_OWN]
    if body is None or any(value is None for _name, value in headers) or '"' in (answer["content_type"] or ""):
        print("# PBX: the placeCall answer has a '$' or a quote nginx would read: bench/pbx_responder.py answers",
              flush=True)
        return None
    directory, port = tempfile.mkdtemp(prefix="makecall-nginx-"), free_port()
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as out:
        out.write(_NGINX_CONF.format(
            dir=directory, port=port, upstream=sim_hub.sim_url, status=answer["status"], body=body,
            content_type=answer["content_type"] or "application/json",
            headers="".join(f"        add_header {name} '{value}' always;\n" for name, value in headers)))
    server = ManagedProcess(f"pbx-nginx-{port}", [binary, "-p", directory, "-e", f"{directory}/error.log", "-c", conf],
                            dict(os.environ))
    sim_hub.processes.append(server)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{url}/_sim/health"), 30, what="nginx in front of the simulator")
    master = psutil.Process(server.process.pid)
    pids = [master.pid] + [child.pid for child in master.children()]

    def answered() -> int:
        time_module.sleep(1.2)  # its access log is flushed every second
        try:
            with open(os.path.join(directory, "placed.log")) as log:
                return sum(1 for _ in log)
        except FileNotFoundError:
            return 0

    return url, pids, answered


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="seconds of each phase (floor, makeCallUrl), or of each step of a sweep")
    parser.add_argument("--rounds", type=int, default=6,
                        help="floor and makeCallUrl runs in turns (ABAB...), sharing --seconds; the ratio's figure "
                             "is the median of the rounds' ratios")
    parser.add_argument("--processes", default="1", help="WEB_PROCESSES of daphne, or several: 1,2")
    parser.add_argument("--sweep", default="", help="rates to step through, START:STOP:STEP or a list")
    parser.add_argument("--floor-sweep", default="",
                        help="with --sweep, also step the floor view through these rates on the same daphne, "
                             "after makeCallUrl (its own p99 <= 20 ms): the stack's own saturation, and with "
                             "several --processes its own ratio beside makeCallUrl's")
    parser.add_argument("--step-retries", type=int, default=1,
                        help="a sweep step over the target is run again this many times before the sweep stops")
    parser.add_argument("--step-warmup", type=float, default=1.0,
                        help="seconds at a step's rate before it is timed (daphne idled while placeCall went "
                             "straight to the PBX at that rate)")
    parser.add_argument("--pbx", choices=("auto", "nginx", "responder", "simulator"), default="auto",
                        help="placeCall answered with the simulator's own answer by nginx (auto: when installed; "
                             "~0.01 ms a placeCall) or bench/pbx_responder.py (~0.05-0.07 ms), or by the full "
                             "simulator; everything else goes to the simulator")
    parser.add_argument("--generator", choices=("python", "h2load"), default="python",
                        help="the load generator: this process's epoll loop (~0.10 ms a request; its kept-alive "
                             "connections split evenly over the daphne processes) or h2load (Debian nghttp2-client; "
                             "~0.02 ms a request, ~0.04 with its start-ups, but its fresh connections each step split "
                             "up to 1 / 7 over two daphne processes)")
    args = parser.parse_args()
    counts = [int(part) for part in args.processes.split(",") if part]
    setup_django()
    from bench.procs import BenchHub, hub_env
    from telephony.providers import provider_for

    sim_hub = BenchHub(hub_env())
    stats = None
    try:
        sim_hub.start_simulator()
        pbx_url, pbx_pids, stats = start_pbx(sim_hub, args.pbx)
        account, integration = click_world(sim_hub.sim_url, pbx_url)
        provider = provider_for(account)
        provider.test_connection()  # log in before timing
        load = Load(provider, integration.client_id)
        provider.place_call(AGENT_EXTENSION, "+33612345678")  # the responder's placeCall answer, from the simulator
        answered = None
        if stats is not None:
            answer = stats()["place_call_answer"]
            answered = lambda: stats()["answered"]  # noqa: E731
            served = start_nginx(sim_hub, answer) if args.pbx in ("auto", "nginx") else None
            if served is not None:
                from telephony.models import PbxAccount

                nginx_url, nginx_pids, answered = served
                PbxAccount.objects.filter(pk=account.pk).update(base_url=f"{nginx_url}/restletrouter")
                account.refresh_from_db()
                provider = provider_for(account)
                provider.test_connection()
                load.provider = provider
                pbx_pids = [*nginx_pids, sim_hub.processes[0].process.pid]  # the responder, idle now, not counted
                server = "nginx (1 worker)"
            else:
                server = "bench/pbx_responder.py"
            print(f"# PBX: {server} answers every placeCall with the simulator's own answer to the "
                  f"first one: {answer['status']} {answer['content_type']} {answer['body']}; everything else "
                  f"(login, directory) goes to the simulator", flush=True)
        else:
            print("# PBX: the full simulator", flush=True)
        describe_generator(args.generator)
        others = Others(pbx_pids, sim_hub.processes[0].process.pid)

        direct_runs: dict[float, list[float]] = {}

        def direct_at(rate: float) -> list[float]:
            # The PBX's own answer time at this rate: placeCall straight to it through ctihub's Istra session.
            if rate not in direct_runs:
                print(f"# straight to the PBX at {rate:g} req/s (placeCall through ctihub's Istra session)",
                      flush=True)
                direct_runs[rate], errors, _achieved = timed_run(rate, args.seconds if args.sweep else
                                                                  args.seconds / args.rounds, load.pbx)
                assert errors == 0, f"{errors} placeCall straight to the PBX failed at {rate:g} req/s"
                percentiles(direct_runs[rate], f"pbx_answer_{rate:g}" if args.sweep else "pbx_answer")
            return direct_runs[rate]

        def name_of(count: int) -> str:
            return f"p{count}_" if len(counts) > 1 else ""

        if args.sweep:
            found = {count: sweep(args, hub_env, load, count, direct_at, name_of(count), others) for count in counts}
            if len(counts) > 1:
                first, last = found[counts[0]][0], found[counts[-1]][0]
                figure("makecall_saturation_ratio", last / first if first else "n/a", "",
                       f">= {SATURATION_RATIO_TARGET} ({counts[-1]} processes over {counts[0]})")
                if args.floor_sweep:
                    first, last = found[counts[0]][1], found[counts[-1]][1]
                    # Not a target: what the stack's own bare view gains from the processes added, on this machine
                    # with the harness on its cores; makeCallUrl's ratio above reads against it.
                    figure("floor_saturation_ratio", last / first if first else "n/a")
        else:
            direct = direct_at(args.rate)
            errors = sum(cost_run(args, hub_env, load, count, direct, name_of(count), others) for count in counts)
            figure("errors", errors, "", "0")
        if answered is not None:
            figure("pbx_responder_place_call_answers", answered())
    finally:
        sim_hub.stop()


if __name__ == "__main__":
    from bench.common import run

    run(main)
