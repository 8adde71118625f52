"""Each parallel test process (pytest-xdist) its own Redis database.

pytest-django gives each xdist worker its own test database (``test_ctihub_gw0``...), but every worker
reads the same ``REDIS_URL``: their Celery queues, leases, channel groups and rate limits would mix, a
hub of one worker running the other's tasks. Loaded with ``-p`` (pytest.ini), before pytest-django
reads the settings, so the settings and every process a test starts see the worker's own database:
``gw0`` keeps the configured one, ``gwN`` takes the N-th next (below 14: the benchmarks use 14 and 15).
"""

from __future__ import annotations

import os
from urllib.parse import urlparse, urlunparse

BENCHMARK_DATABASES = 14


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
