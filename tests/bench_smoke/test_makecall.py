"""A tiny run of each request benchmark: makeCallUrl's cost, parts and sweep; the upload backlog; ingest."""

import pytest

from tests.bench_smoke.runner import smoke_test

pytestmark = pytest.mark.e2e

SLOT = 1  # this module's benchmark databases (runner.bench_env)
NAMES = ['makecall_overhead', 'makecall_overhead:sweep', 'makecall_parts', 'upload_backlog', 'ingest']

test_it_runs_the_benchmark_and_prints_its_figures = smoke_test(SLOT, NAMES)
