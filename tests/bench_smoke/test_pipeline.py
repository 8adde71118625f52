"""A tiny run of each worker benchmark: CRM event latency, the cost of a frame, scale-out, sockets per worker."""

import pytest

from tests.bench_smoke.runner import smoke_test

pytestmark = pytest.mark.e2e

SLOT = 2  # this module's benchmark databases (runner.bench_env)
NAMES = ['crm_event_latency', 'frame_cost', 'scale_out', 'sockets_per_worker']

test_it_runs_the_benchmark_and_prints_its_figures = smoke_test(SLOT, NAMES)
