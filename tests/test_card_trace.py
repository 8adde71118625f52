"""The pop-up benchmark's diagnosis (ctihub/lib/card_trace.py): what paused a process, pushed where the benchmark reads it."""

import subprocess
import sys

import redis
from django.conf import settings

from tests.support.processes import REPO

SCRIPT = """
import os, time, gc
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ctihub.settings")
import django; django.setup()
from ctihub.lib import card_trace
card_trace.watch_pauses("probe")
card_trace.note_pause("resync", time.time(), 0.02)
card_trace.note_pause("too_short", time.time(), 0.001)
garbage = []
for _ in range(400_000):
    node = [None]
    node[0] = node  # a cycle: only the collector frees it
    garbage.append(node)
garbage = None
gc.collect()
time.sleep(1.5)  # the thread pushes once a second
"""


def run_probe(card_trace: str) -> list[str]:
    import os

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete("ctihub:trace:pauses")
    env = dict(os.environ, CARD_TRACE=card_trace, REDIS_URL=settings.REDIS_URL)
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    try:
        return [line.decode() for line in client.lrange("ctihub:trace:pauses", 0, -1)]
    finally:
        client.delete("ctihub:trace:pauses")
        client.close()


def test_it_pushes_a_process_s_collections_and_noted_pauses_only_when_tracing():
    lines = run_probe("true")
    kinds = [line.split()[1] for line in lines]
    assert "resync" in kinds and "too_short" not in kinds, lines
    assert "gc2" in kinds, lines  # the full collection of 400,000 cycles took more than 5 ms
    process, _kind, start, seconds, cpu = lines[kinds.index("resync")].split()
    assert process == "probe" and float(seconds) == float(cpu) == 0.02 and float(start) > 1.7e9
    assert run_probe("false") == []
