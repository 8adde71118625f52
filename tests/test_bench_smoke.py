"""A tiny run of every benchmark, so the scripts in bench/ cannot rot (their figures live in docs/performance.md)."""

import os
import re
import subprocess
import sys

import pytest

from tests.support.processes import REPO

pytestmark = pytest.mark.e2e

BENCHMARKS = {
    "upload_backlog": ["--calls", "120"],
    "ingest": ["--calls", "30", "--terminals", "5", "--threads", "2"],
    "popup_latency": ["--agents", "20", "--terminals", "5", "--rate", "10", "--seconds", "2"],
    "makecall_overhead": ["--rate", "20", "--seconds", "1"],
    "sockets_per_worker": ["--sockets", "10", "--keepalive", "1", "--hold", "3"],
    "frame_cost": ["--frames", "12", "--rate", "10", "--terminals", "2", "--floor-units", "20"],
}


def bench_env() -> dict[str, str]:
    from django.conf import settings

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    redis_base = settings.REDIS_URL.rsplit("/", 1)[0]
    # Their own database and Redis database, so a benchmark run beside the suite cannot disturb them.
    env.update(BENCH_DATABASE_URL=os.environ.get("BENCH_SMOKE_DATABASE_URL",
                                                 "postgres://postgres@127.0.0.1:5432/ctihub_bench_smoke"),
               BENCH_REDIS_URL=os.environ.get("BENCH_SMOKE_REDIS_URL", f"{redis_base}/15"), PYTHONPATH=str(REPO))
    return env


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_it_runs_the_benchmark_and_prints_its_figures(name):
    done = subprocess.run([sys.executable, "-m", f"bench.{name}", *BENCHMARKS[name]], cwd=REPO, env=bench_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    figures = dict(re.findall(r"^(\w+): (\S+)", done.stdout, re.M))
    for zero in ("limit_errors", "duplicates", "cards_lost", "cards_duplicated", "errors"):
        if zero in figures:
            assert figures[zero] == "0", done.stdout
    if name == "upload_backlog":
        assert figures["upload_requests"] == "3" and figures["calls_uploaded"] == "120"
    if name == "sockets_per_worker":
        assert figures["sockets_held"] == "10" and figures["sockets_with_two_keepalives"] == "10"
    if name == "ingest":
        assert figures["events_stored"] == "90" and figures["calls_ended"] == "30"
    if name == "frame_cost":
        assert figures["frames_stored"] == "12" and figures["cards_delivered"] == "12"
        for cost in ("worker_cpu_per_frame", "floor_cpu_per_frame", "worker_cpu_ratio_to_floor", "calibration_loop"):
            assert float(figures[cost]) > 0, done.stdout
