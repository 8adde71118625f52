"""Each parallel test process (pytest-xdist) its own Redis database; the longest test modules first.

pytest-django gives each xdist worker its own test database (``test_ctihub_gw0``...), but every worker
reads the same ``REDIS_URL``: their Celery queues, leases, channel groups and rate limits would mix, a
hub of one worker running the other's tasks. Loaded with ``-p`` (pytest.ini), before pytest-django
reads the settings, so the settings and every process a test starts see the worker's own database:
``gw0`` keeps the configured one, ``gwN`` takes the N-th next (below 13: the benchmarks use 14 and 15, and the
benchmark smoke modules 15, 14 and 13, one each: ``tests/bench_smoke/runner.py``).
"""

from __future__ import annotations

import os
from urllib.parse import urlparse, urlunparse

import pytest

BENCHMARK_DATABASES = 13


def _worker_redis_url(url: str, worker: str) -> str:
    parts = urlparse(url)
    if parts.scheme not in ("redis", "rediss"):
        return url  # embedded (unix socket) or unusual: left as it is, and not run in parallel
    base = int(parts.path.strip("/") or 0)
    index = int(worker.removeprefix("gw"))
    database = base + index if base + index < BENCHMARK_DATABASES else base - index
    return urlunparse(parts._replace(path=f"/{database}"))


if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("REDIS_URL"):
    os.environ["REDIS_URL"] = _worker_redis_url(os.environ["REDIS_URL"], os.environ["PYTEST_XDIST_WORKER"])


# The modules that hold a test process longest (each over a minute on a busy 2-core machine, issue 16),
# longest first. With ``--dist loadfile`` a process takes one module at a time, in collection order
# (``--no-loadscope-reorder``: xdist would otherwise hand out the modules with the most tests first, and these
# have few): started first, they run side by side from the start instead of one of them ending the run alone.
LONGEST_MODULES = (
    "tests/faults/test_pbx_session_faults.py",
    "tests/faults/test_pbx_faults.py",
    "tests/faults/test_process_faults.py",
)


def _module_rank(item, e2e_modules: set[str]) -> int:
    path = item.nodeid.split("::", 1)[0]
    if path in LONGEST_MODULES:
        return LONGEST_MODULES.index(path)
    # Then the rest of the modules that start real processes (slow), then the quick ones, each in their order.
    return len(LONGEST_MODULES) + (0 if path in e2e_modules else 1)


@pytest.hookimpl(trylast=True)  # after pytest-django's own ordering, which this sort keeps within a rank
def pytest_collection_modifyitems(session, config, items) -> None:
    """Longest modules first (see ``LONGEST_MODULES``); a module's own tests keep their order."""
    e2e_modules = {item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker("e2e")}
    items.sort(key=lambda item: _module_rank(item, e2e_modules))  # stable: a module's tests stay together
