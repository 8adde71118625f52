"""A tiny run of each worker benchmark: CRM event latency, the cost of a frame, scale-out, sockets per worker."""

import pytest

from tests.bench_smoke.runner import RUN_LIMIT_S, run_and_check

pytestmark = pytest.mark.e2e

SLOT = 2  # this module's benchmark databases (runner.bench_env)
NAMES = ['crm_event_latency', 'frame_cost', 'scale_out', 'sockets_per_worker']


@pytest.mark.timeout(RUN_LIMIT_S + 60)
@pytest.mark.parametrize("name", NAMES)
def test_it_runs_the_benchmark_and_prints_its_figures(name):
    run_and_check(name, SLOT)
