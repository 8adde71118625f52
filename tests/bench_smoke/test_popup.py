"""A tiny run of each pop-up benchmark: latency, the sweep, the storms, the keep-alives."""

import pytest

from tests.bench_smoke.runner import smoke_test

pytestmark = pytest.mark.e2e

SLOT = 0  # this module's benchmark databases (runner.bench_env)
NAMES = ['popup_latency', 'popup_latency:keepalive', 'popup_latency:storm', 'popup_latency:storm_one_process', 'popup_latency:sweep']

test_it_runs_the_benchmark_and_prints_its_figures = smoke_test(SLOT, NAMES)
