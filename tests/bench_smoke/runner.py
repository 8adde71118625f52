"""What the benchmark smoke tests share: each benchmark's tiny arguments, how it is run, what its output must show.

The tests are split over three modules (``test_popup.py``, ``test_makecall.py``, ``test_pipeline.py``) so that
``--dist loadfile`` runs them in three test processes at once: as one module they held one process for 2.5
minutes on a fast machine, over 5 on one half as fast, and ended the suite alone. Each module gets its own
module its own benchmark database and Redis database (``bench_env``), so two benchmarks running at once cannot
take each other's tasks.
"""

import os
import re
import signal
import subprocess
import sys

from tests.support.processes import REPO

BENCHMARKS = {
    "upload_backlog": ["--calls", "120"],
    "crm_event_latency": ["--rate", "3", "--seconds", "2", "--call-seconds", "0.5", "--events-concurrency", "2"],
    "ingest": ["--calls", "30", "--terminals", "5", "--threads", "2"],
    # The latency run drives the simulator a control request a move, the sweep by a script (the default).
    "popup_latency": ["--agents", "20", "--terminals", "5", "--rate", "10", "--seconds", "2", "--driver", "requests"],
    "popup_latency:sweep": ["--agents", "10", "--terminals", "3", "--sweep", "5,10", "--seconds", "1",
                            "--clients", "2"],
    "popup_latency:storm": ["--agents", "30", "--storm"],  # as many web processes as deployed (one per core)
    "popup_latency:storm_one_process": ["--agents", "30", "--storm", "--web-processes", "1"],
    "popup_latency:keepalive": ["--agents", "15", "--keepalive", "--keepalive-storm", "5", "--seconds", "4"],
    "makecall_overhead": ["--rate", "20", "--seconds", "1"],
    # The saturation sweep, one and two web processes: "module:variant" runs bench.<module>.
    "makecall_parts": ["--requests", "20"],
    "makecall_overhead:sweep": ["--sweep", "10,20", "--floor-sweep", "10,20", "--seconds", "1", "--processes", "1,2"],
    "sockets_per_worker": ["--sockets", "10", "--keepalive", "1", "--hold", "3"],
    "scale_out": ["--workers", "2", "--listeners", "6", "--rate", "2", "--baseline", "3", "--rebalance-timeout", "6",
                  "--settle", "10"],
    "frame_cost": ["--frames", "12", "--rounds", "2", "--rate", "10", "--terminals", "2", "--back-to-back-units", "20"],
}


def bench_env(slot: int) -> dict[str, str]:
    """The benchmark's environment: a database and a Redis database of the smoke module's own (``slot`` 0-2)."""
    from django.conf import settings

    from tests.support.parallel import BENCHMARK_DATABASES

    assert 0 <= slot < 16 - BENCHMARK_DATABASES, slot
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    redis_base = settings.REDIS_URL.rsplit("/", 1)[0]
    # Per module, not per test process: a module runs in one process, so however many processes there are, two
    # modules running at once never share a database (Redis 15, 14, 13; the suite's own stay below 13).
    database = os.environ.get("BENCH_SMOKE_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ctihub_bench_smoke")
    env.update(BENCH_DATABASE_URL=database + (f"_{slot}" if slot else ""),
               BENCH_REDIS_URL=os.environ.get("BENCH_SMOKE_REDIS_URL", f"{redis_base}/{15 - slot}"),
               PYTHONPATH=str(REPO))
    return env


# Generous: a tiny run takes 10-60 s on this kind of machine, twice that on one half as fast and busy.
RUN_LIMIT_S = 300


def run_benchmark(argv: list[str], slot: int = 0) -> subprocess.CompletedProcess:
    process = subprocess.Popen(argv, cwd=REPO, env=bench_env(slot), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        stdout, stderr = process.communicate(timeout=RUN_LIMIT_S)
    except BaseException:
        # Cut short (its limit, pytest's, a Ctrl-C): interrupted as a Ctrl-C would, so that its own finally
        # blocks stop the simulator, workers and daphnes it started. Each runs in a session of its own, out of
        # reach of a kill of the benchmark, and a worker left running took the next benchmark's tasks from the
        # same Redis database (one run failed five benchmarks so).
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def smoke_test(slot: int, names: list[str]):
    """A smoke module's test: each benchmark of ``names`` run tiny on the databases of ``slot``, a test each."""
    import pytest

    @pytest.mark.timeout(RUN_LIMIT_S + 60)
    @pytest.mark.parametrize("name", names)
    def test_it_runs_the_benchmark_and_prints_its_figures(name):
        run_and_check(name, slot)

    return test_it_runs_the_benchmark_and_prints_its_figures


def run_and_check(name: str, slot: int) -> None:
    """Run the benchmark ``name`` ("module" or "module:variant") tiny on the databases of ``slot`` (one per smoke
    module), and check what it printed."""
    module = name.split(":")[0]
    done = run_benchmark([sys.executable, "-m", f"bench.{module}", *BENCHMARKS[name]], slot)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    figures = dict(re.findall(r"^(\w+): (\S+)", done.stdout, re.M))
    for zero in ("limit_errors", "duplicates", "cards_lost", "cards_duplicated", "errors"):
        if zero in figures:
            assert figures[zero] == "0", done.stdout
    if name == "upload_backlog":
        assert figures["upload_requests"] == "3" and figures["calls_uploaded"] == "120"
    if name == "sockets_per_worker":
        assert figures["sockets_held"] == "10" and figures["sockets_with_two_keepalives"] == "10"
    if name == "scale_out":
        # Every listener held by someone after the joins and after the leave; the frames counted. Fair shares
        # and frames kept through moves are issue 19's points 1 and 2: printed, not asserted here.
        assert re.search(r"^share_2_workers: worker_0 \d+ .*worker_1 \d+ .*; unheld 0$", done.stdout, re.M), done.stdout
        assert re.search(r"^share_1_workers_after_leave: worker_1 6 .*; unheld 0$", done.stdout, re.M), done.stdout
        assert "rebalance_after_join_2" in figures and "rebalance_after_leave" in figures
        assert int(figures["calls_placed"]) > 0 and int(figures["frames_per_call"]) >= 3
        assert "frames_lost_during_moves" in figures and "frames_duplicated_during_moves" in figures
    if name == "popup_latency":
        assert figures["cards_lost"] == "0" and float(figures["daphne_cpu_ratio_to_floor"]) > 0
        assert "worker" in figures["cpu_per_event"] and figures["storm_refused"] == "0"
        # Each card's time split by stage (CARD_TRACE), and the machine beside it.
        assert re.search(r"^stage_split: pbx_socket .*; websocket [\d.]+ / [\d.]+ / \d+ ms", done.stdout, re.M), done.stdout
        assert "machine" in figures and "pauses" in figures
    if name == "popup_latency:sweep":
        assert re.search(r"^sweep_5_cards: lost 0, duplicated 0$", done.stdout, re.M), done.stdout
        assert "sweep_5_cpu_per_event" in figures and "popup_saturation_rate" in figures
        assert "sweep_5_stage_split" in figures and "sweep_5_machine" in figures
    if name.startswith("popup_latency:storm"):
        from django.conf import settings

        assert figures["web_processes"] == ("1" if name.endswith("one_process") else str(settings.WEB_PROCESSES))
        assert figures["storm_consoles"] == "30" and figures["storm_refused"] == "0"
        assert figures["storm_errors"] == "0" and "storm_connect_to_snapshot_p99" in figures
    if name == "popup_latency:keepalive":
        assert int(figures["keepalive_pings_sent"]) >= 10
        assert figures["keepalive_pongs_received"] == figures["keepalive_pings_sent"], done.stdout
        assert "keepalive_daphne_cpu_per_ping" in figures and "keepalive_pong_p99" in figures
        assert figures["keepalive_storm_pongs_received"] == figures["keepalive_storm_pings_sent"], done.stdout
        assert "keepalive_storm_pongs_later_than_the_page_waits" in figures
    if name == "ingest":
        assert figures["events_stored"] == "90" and figures["calls_ended"] == "30"
    if name == "crm_event_latency":
        placed = int(figures["calls_placed"])
        assert placed >= 5 and figures["events_received"] == figures["events_expected"] == str(2 * placed)
        assert figures["frames_timed"] == str(2 * placed), done.stdout  # every event matched with its frame
        for zero in ("events_missing", "events_duplicated", "limit_errors_at_retailcrm",
                     "uploads_sent_while_a_start_event_waited"):
            assert figures[zero] == "0", done.stdout
        assert "start_event_latency_p99" in figures and "hangup_event_latency_p99" in figures
    if name == "makecall_overhead":
        # Both costs measured on the same daphne, the floor a bare DRF view (bench/floor_views.py).
        assert float(figures["floor_cpu_per_request"]) > 0 and float(figures["makecall_cpu_per_request"]) > 0
        assert float(figures["makecall_cpu_ratio_to_floor"]) > 0
    if name == "makecall_parts":
        assert float(figures["makecall_thread_cpu_per_request"]) > float(figures["makecall_without_place_call"])
    if name == "makecall_overhead:sweep":
        assert "p1_makecall_saturation_rate" in figures and "p2_makecall_saturation_rate" in figures
        assert "makecall_saturation_ratio" in figures
        # The bare DRF view swept on the same processes: the stack's own saturation and ratio beside makeCallUrl's.
        # (Whether a step holds is timing: a tiny run on a busy machine may not, so only the report is checked.)
        assert float(figures["p1_floor_saturation_rate"]) in (0, 10, 20), done.stdout
        assert float(figures["p2_floor_saturation_rate"]) in (0, 10, 20), done.stdout
        assert "floor_saturation_ratio" in figures, done.stdout
        assert re.search(r"^p2_floor_sweep_10: p99 [\d.]+ ms, .*cpu share \d+% / \d+%, .*, (ok|over)$", done.stdout,
                         re.M), done.stdout
        assert re.search(r"^p1_floor_sweep_10_tail: \d+ of \d+ requests over 20.0 ms", done.stdout, re.M), done.stdout
        assert re.search(r"^p2_sweep_10: .*cpu share \d+% / \d+%, connections \d+ / \d+", done.stdout, re.M), done.stdout
        # Every step names each process's CPU per request, so a saturation names its process.
        assert re.search(r"^p2_sweep_10_cpu: web [\d.]+ \+ [\d.]+ ms/request .*pbx [\d.]+ ms/request.*"
                         r"load generator [\d.]+ ms/request.*web processes got \d+% of \d+ cores", done.stdout, re.M), \
            done.stdout
        # ... and where its slow requests were: which process, which second, for want of a connection or not.
        assert re.search(r"^p2_sweep_10_tail: \d+ of \d+ requests over [\d.]+ ms .*: \d+ / \d+ on each process, "
                         r".* 0 opened during the run$", done.stdout, re.M), done.stdout
    if name.startswith("makecall_overhead"):
        # The PBX side is the cheap responder, and the output says what it answers.
        assert re.search(r"^# PBX: (nginx \(1 worker\)|bench/pbx_responder\.py) answers every placeCall with the "
                         r"simulator's own answer", done.stdout, re.M), done.stdout
        assert int(figures["pbx_responder_place_call_answers"]) > 0
    if name == "frame_cost":
        assert figures["frames_stored"] == "12" and figures["cards_delivered"] == "12"
        # One sync task a call a commit (the run fails otherwise): 12, or fewer if two frames of a call were one burst.
        assert 0 < int(figures["crm_hand_offs"]) <= 12
        for cost in ("worker_cpu_per_frame", "floor_cpu_per_frame", "worker_cpu_ratio_to_floor", "calibration_loop"):
            assert float(figures[cost]) > 0, done.stdout
