"""Real processes for the benchmarks: the simulator, daphne and a Celery worker on the benchmark database.

daphne runs ``WEB_PROCESSES`` processes if the environment sets it (``WEB_PROCESSES=2 python -m bench...``),
else one, as the figures of one process were always taken. With more than one, ``start_web()``'s process is
their supervisor: ``web_cpu_seconds`` counts the CPU of the children that serve.
"""

from __future__ import annotations

import os

from django.conf import settings

from tests.support.processes import (
    ManagedProcess,
    celery_worker,
    daphne_process,
    free_port,
    http_ok,
    simulator_process,
    wait_for,
    wait_ready,
)


def hub_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DATABASE_URL=os.environ["DATABASE_URL"], REDIS_URL=settings.REDIS_URL, SECRET_KEY=settings.SECRET_KEY,
               FIELD_ENCRYPTION_KEY=",".join(settings.FIELD_ENCRYPTION_KEYS), PYTHONUNBUFFERED="1",
               LOG_LEVEL="WARNING", DATABASE_CONN_MAX_AGE="60",
               DEBUG="false")  # as in production: DEBUG's cursor wrapper costs every query
    env.update(extra)
    return env


def web_cpu_seconds(web: ManagedProcess) -> float:
    """User and system CPU time of daphne so far: the process and its children (the serving ones, if several)."""
    import psutil

    root = psutil.Process(web.process.pid)
    return sum(sum(process.cpu_times()[:2]) for process in [root, *root.children(recursive=True)])


class BenchHub:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.sim_port, self.web_port = free_port(), free_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.processes: list[ManagedProcess] = []

    def start_simulator(self) -> None:
        self.processes.append(simulator_process(self.sim_port))
        wait_for(lambda: http_ok(f"{self.sim_url}/_sim/health"), 30, what="the simulator")

    def start_web(self) -> ManagedProcess:
        web = daphne_process(self.web_port, self.env)
        self.processes.append(web)
        wait_for(lambda: http_ok(f"{self.web_url}/healthz"), 30, what="daphne")
        return web

    def start_worker(self) -> ManagedProcess:
        worker = celery_worker(f"bench-worker-{self.sim_port}", self.env)
        self.processes.append(worker)
        return wait_ready(worker)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def web_processes_of(web: ManagedProcess, processes: int) -> list:
    """The processes that serve: the supervisor's children with several, else daphne itself."""
    import psutil

    root = psutil.Process(web.process.pid)
    return root.children() if processes > 1 else [root]


def wait_until_every_web_process_accepts(web: ManagedProcess, url: str, processes: int) -> None:
    """/healthz answered by one process says nothing of the others, still loading Django maybe: a storm opened
    then would go to the first one and time the second one's start (as ``bench.makecall_overhead`` waits)."""
    import socket
    import time

    if processes < 2:
        return
    port = int(url.rsplit(":", 1)[1])

    def every_one_accepts() -> bool:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4 * processes)]
        try:
            time.sleep(0.3)
            return all(any(c.status == "ESTABLISHED" and c.laddr and c.laddr.port == port
                           for c in child.net_connections(kind="tcp")) for child in web_processes_of(web, processes))
        finally:
            for sock in held:
                sock.close()

    wait_for(lambda: len(web_processes_of(web, processes)) == processes and every_one_accepts(), 60, interval=0.5,
             what=f"{processes} daphne processes accepting")
