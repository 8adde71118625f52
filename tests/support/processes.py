"""Starting the real parts (daphne, Celery, the simulator) as subprocesses for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path

import requests
from django.conf import settings
from django.db import connection

REPO = Path(__file__).resolve().parents[2]
# CTIHUB_TEST_ARTIFACTS lets two suites run side by side without sharing (and misreading) process logs.
ARTIFACTS = Path(os.environ.get("CTIHUB_TEST_ARTIFACTS") or REPO / "test-artifacts")


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the thing polled is not up yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


def http_ok(url: str) -> bool:
    return requests.get(url, timeout=1).status_code < 500


def test_database_url() -> str:
    """The URL of the database pytest-django created, for subprocesses to share."""
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        raise RuntimeError("end-to-end tests need PostgreSQL: set DATABASE_URL (scripts/test does)")
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "SECRET_KEY": settings.SECRET_KEY,
            "FIELD_ENCRYPTION_KEY": ",".join(settings.FIELD_ENCRYPTION_KEYS),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class ManagedProcess:
    """A subprocess whose output goes to test-artifacts/<name>.log and that is always stopped."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path = REPO):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = ARTIFACTS / f"{name}.log"
        self._log = open(self.log_path, "wb")  # a fresh log: an older run's lines must not satisfy a wait
        self.process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._signalled: int | None = None  # the signal ``request_stop`` sent, that ``stop`` need not send again

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request_stop(self, sig=signal.SIGTERM) -> None:
        """Ask it to stop and return at once (``stop`` then waits for it): processes stop side by side."""
        if self.alive():
            os.killpg(self.process.pid, sig)
            self._signalled = sig

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        if self.alive():
            if self._signalled != sig:  # a second SIGTERM could cut a Celery worker's warm shutdown short
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        self.stop(sig=signal.SIGKILL, timeout=5)


def celery_worker(name: str, env: dict[str, str], *extra: str) -> ManagedProcess:
    argv = [sys.executable, "-m", "celery", "-A", "ctihub", "worker", "--loglevel", "INFO",
            "--concurrency", "1", "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle", *extra]
    return ManagedProcess(name, argv, env)


def wait_ready(worker: ManagedProcess, timeout: float = 60) -> ManagedProcess:
    """``worker`` (a ``celery_worker``) once it says it is ready to take tasks; RuntimeError if it died first."""
    wait_for(lambda: "ready." in worker.log() or not worker.alive(), timeout, what=f"{worker.name} to be ready")
    if not worker.alive():
        raise RuntimeError(f"{worker.name} died at start: {worker.log()[-3000:]}")
    return worker


@contextmanager
def ready_celery_worker(name: str, env: dict[str, str], *extra: str):
    """``celery_worker`` once it is ready to take tasks; stopped on the way out."""
    worker = celery_worker(name, env, *extra)
    try:
        yield wait_ready(worker)
    finally:
        worker.stop()


def simulator_process(port: int) -> ManagedProcess:
    return ManagedProcess(f"simulator-{port}", [sys.executable, "-m", "simulator", "--host", "127.0.0.1",
                                                "--port", str(port)], dict(os.environ, PYTHONUNBUFFERED="1"))


def daphne_process(port: int, env: dict[str, str], generation: int = 0) -> ManagedProcess:
    """``generation``: how many daphnes ran on this port before (a restart must not truncate their log).

    One daphne process unless ``env`` sets ``WEB_PROCESSES``: a test reads the web process's own sockets and
    CPU by its pid, and a supervisor with a child per core would cost each hub another Django process.
    """
    name = f"daphne-{port}" if not generation else f"daphne-{port}-{generation}"
    return ManagedProcess(name, [sys.executable, "-m", "ctihub.web", "-b", "127.0.0.1", "-p", str(port),
                                 "ctihub.asgi:application"], {"WEB_PROCESSES": "1", **env})


class Hub:
    """A whole hub on real processes: the simulator, daphne, and Celery workers holding sockets."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.sim_port = free_port()
        self.web_port = free_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.processes: list[ManagedProcess] = []
        self.workers: list[ManagedProcess] = []

    def start(self, workers: int = 1, web: bool = True) -> Hub:
        self.simulator = self._track(simulator_process(self.sim_port))
        wait_for(lambda: http_ok(f"{self.sim_url}/_sim/health"), 30, what="the simulator")
        if web:
            self.web = self._track(daphne_process(self.web_port, self.env))
            wait_for(lambda: http_ok(f"{self.web_url}/healthz"), 30, what="daphne")
        for _ in range(workers):
            self.start_worker()
        return self

    def restart_web(self) -> ManagedProcess:
        """Stop daphne and start a new one on the same port, as a deploy would."""
        self.web.stop()
        self._web_restarts = getattr(self, "_web_restarts", 0) + 1
        self.web = self._track(daphne_process(self.web_port, self.env, self._web_restarts))
        wait_for(lambda: http_ok(f"{self.web_url}/healthz"), 30, what="daphne after a restart")
        return self.web

    def start_worker(self, *extra: str) -> ManagedProcess:
        """A worker as production runs it: every queue (the call-events queue first), the PBX sockets."""
        # Numbered by every worker ever started, so a replacement never reuses (and truncates) a log.
        self._workers_started = getattr(self, "_workers_started", 0) + 1
        worker = self._track(celery_worker(f"hub-worker-{self._workers_started - 1}-{self.sim_port}", self.env,
                                           *extra))
        wait_ready(worker)
        self.workers.append(worker)
        return worker

    def start_events_worker(self, concurrency: int = 2) -> ManagedProcess:
        """The dedicated retailCRM call-events worker (``-Q call-events``): no sockets, not in ``workers``."""
        worker = self._track(celery_worker(f"hub-events-{self.sim_port}", self.env, "-Q", "call-events",
                                           "--concurrency", str(concurrency)))
        return wait_ready(worker)

    def kill_worker(self, index: int = 0) -> ManagedProcess:
        """SIGKILL one worker (no shutdown, its leases left to expire) and forget it."""
        worker = self.workers.pop(index)
        worker.kill()
        return worker

    def restart_workers(self) -> list[ManagedProcess]:
        """Stop every worker cleanly (SIGTERM) and start as many new ones, as a deploy would."""
        count = len(self.workers)
        for worker in self.workers:
            worker.stop()
        self.workers = []
        return [self.start_worker() for _ in range(count)]

    def _track(self, process: ManagedProcess) -> ManagedProcess:
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Workers and daphne stop side by side (each takes a second or two to shut down cleanly; one after
        the other, that was most of every hub's teardown), then the simulator: no worker sees its PBX go."""
        simulator = getattr(self, "simulator", None)
        hub = [process for process in reversed(self.processes) if process is not simulator]
        for process in hub:
            process.request_stop()
        for process in hub:
            process.stop()
        if simulator is not None:
            simulator.stop()
