"""``python -m simulator``, the process the demo, the hub tests and the benchmarks start."""

from __future__ import annotations

import os
import subprocess
import sys

import requests

from tests.support.processes import REPO, free_port, http_ok, wait_for


def _serve(*extra: str) -> str:
    """Starts the simulator, makes a few requests, stops it, and answers what it wrote."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "simulator", "--port", str(port), *extra], cwd=REPO,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/_sim/health"), 30, what="the simulator")
        for _ in range(3):
            requests.get(f"http://127.0.0.1:{port}/_sim/istra/calls", timeout=10).raise_for_status()
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    return output


def test_it_logs_no_line_per_request_unless_asked():
    """A benchmark drives the simulator with hundreds of control requests a second: a log line each was a
    measurable share of its CPU per frame. ``--access-log`` brings the lines back for debugging."""
    quiet, logged = _serve(), _serve("--access-log")

    assert "simulator listening on" in quiet
    assert "GET /_sim/istra/calls" not in quiet
    assert logged.count("GET /_sim/istra/calls") == 3
