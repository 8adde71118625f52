"""Where makeCallUrl's CPU goes, part by part, in one thread (the profile behind benchmark 4's ratio).

    .venv/bin/python -m bench.makecall_parts [--requests 400]

daphne's sampled profile shows its loop thread (Twisted, daphne, the same for every view) and
misattributes the time threads wait for the GIL. This calls what a pool thread of
``ctihub.lib.http_pool`` does for a request (middleware, view, answer: ``PooledASGIHandler._respond``)
in a loop in this process, against the simulator and Redis as the benchmark does, and prints the
thread's CPU per request (best of three runs) for the floor view, makeCallUrl, and makeCallUrl
with one part replaced at a time: placeCall answered at once, the rate limit's Redis script
replaced by nothing; and the kernel's part of the floor's and makeCallUrl's CPU (``RUSAGE_THREAD``
system time). The differences are what each part costs inside a request, which on a busy
2-core machine is well above what the same call costs alone in a loop (also printed).
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import resource
import time
from unittest import mock

from bench.common import figure, setup_django
from bench.makecall_overhead import AGENT_EXTENSION, click_world


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400, help="requests per measurement (three of them)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print cProfile's top N functions (internal time) over makeCallUrl's requests")
    parser.add_argument("--callers", default="", metavar="REGEX",
                        help="with --profile, also print who called the functions matching REGEX")
    args = parser.parse_args()
    # The floor view is routed only under BENCH_FLOORS; the rate limit's own limit is not what this measures.
    os.environ["BENCH_FLOORS"] = "true"
    os.environ["PUBLIC_RATE_LIMIT_PER_SECOND"] = "100000"
    setup_django()
    from bench.procs import BenchHub, hub_env
    from ctihub.lib import ratelimit
    from ctihub.lib.http_pool import PooledASGIHandler
    from telephony.providers import registry
    from telephony.providers.istra_myrcc.transport import MyRccProvider

    hub = BenchHub(hub_env())
    try:
        hub.start_simulator()
        account, integration = click_world(hub.sim_url)

        handler = PooledASGIHandler()
        query = f"clientId={integration.client_id}&code=101&phone=%2B33612345678&userId=7".encode()

        def respond(path: str) -> None:
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                     "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
                     "root_path": "", "headers": [(b"host", b"127.0.0.1"), (b"accept", b"*/*")],
                     "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
            response = handler._respond(scope, io.BytesIO())
            assert response.status_code == 200, response.content

        def cpu_ms(work) -> float:
            best = float("inf")
            for _ in range(3):
                started = time.thread_time()
                for _ in range(args.requests):
                    work()
                best = min(best, (time.thread_time() - started) * 1000 / args.requests)
            return best

        def sys_ms(work) -> float:
            # The kernel's part of the thread's CPU (system calls, socket wake-ups): Python cannot shrink it.
            best = float("inf")
            for _ in range(3):
                started = resource.getrusage(resource.RUSAGE_THREAD).ru_stime
                for _ in range(args.requests):
                    work()
                best = min(best, (resource.getrusage(resource.RUSAGE_THREAD).ru_stime - started) * 1000 / args.requests)
            return best

        floor, makecall = "/api/bench-floor/make-call", "/api/retailcrm/make-call"
        for _ in range(50):  # log in to the PBX, fill the brief caches
            respond(floor)
            respond(makecall)
        gc.collect()
        gc.freeze()  # as daphne does once loaded
        figure("floor_thread_cpu_per_request", cpu_ms(lambda: respond(floor)), "ms")
        figure("makecall_thread_cpu_per_request", cpu_ms(lambda: respond(makecall)), "ms")
        figure("floor_thread_system_cpu_per_request", sys_ms(lambda: respond(floor)), "ms")
        figure("makecall_thread_system_cpu_per_request", sys_ms(lambda: respond(makecall)), "ms")
        with mock.patch.object(MyRccProvider, "place_call", lambda self, *args: {}):
            figure("makecall_without_place_call", cpu_ms(lambda: respond(makecall)), "ms")
            with mock.patch.object(ratelimit, "take", lambda *args, **kwargs: 0):
                figure("makecall_without_place_call_and_rate_limit", cpu_ms(lambda: respond(makecall)), "ms")
        with mock.patch.object(ratelimit, "take", lambda *args, **kwargs: 0):
            figure("makecall_without_rate_limit", cpu_ms(lambda: respond(makecall)), "ms")
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile(time.thread_time)
            profiler.runcall(lambda: [respond(makecall) for _ in range(args.requests)])
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(args.profile)
            stats.sort_stats("cumulative").print_stats(args.profile)
            if args.callers:
                stats.print_callers(args.callers)
        provider, _lock = registry.cached_provider(account)
        figure("place_call_alone", cpu_ms(lambda: provider.place_call(AGENT_EXTENSION, "+33612345678")), "ms")
        figure("rate_limit_alone", cpu_ms(lambda: ratelimit.take("bench", "client:bench")), "ms")
    finally:
        hub.stop()


if __name__ == "__main__":
    from bench.common import run

    run(main)
