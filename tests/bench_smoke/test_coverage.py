"""Every benchmark has its tiny run, in exactly one of the smoke modules."""

import collections

from tests.bench_smoke import test_makecall, test_pipeline, test_popup
from tests.bench_smoke.runner import BENCHMARKS
from tests.support.processes import REPO

# bench/ modules that are parts of the benchmarks (run through the ones listed), and the soak: the fault suite's
# harness run for minutes (tests/faults plays each of its faults), too long for a tiny run.
NOT_BENCHMARKS = {"__init__", "common", "floor_consumer", "floor_views", "floor_worker", "makecall_generator",
                  "pbx_responder", "popup_clients", "procs", "soak"}


def test_it_runs_every_benchmark_in_exactly_one_smoke_module():
    names = collections.Counter(test_popup.NAMES + test_makecall.NAMES + test_pipeline.NAMES)
    assert set(names) == set(BENCHMARKS)
    assert all(count == 1 for count in names.values()), names


def test_it_has_a_tiny_run_of_every_benchmark_module():
    modules = {path.stem for path in (REPO / "bench").glob("*.py")} - NOT_BENCHMARKS
    assert modules == {name.split(":")[0] for name in BENCHMARKS}


def test_it_gives_each_smoke_module_databases_of_its_own():
    """Modules run side by side in any two test processes: the same databases would mix their tasks."""
    from tests.bench_smoke.runner import bench_env

    envs = [bench_env(module.SLOT) for module in (test_popup, test_makecall, test_pipeline)]
    assert len({env["BENCH_REDIS_URL"] for env in envs}) == len({env["BENCH_DATABASE_URL"] for env in envs}) == 3
