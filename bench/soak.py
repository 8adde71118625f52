"""Soak: steady calls for minutes while every kind of fault is injected on a schedule; nothing may be lost.

The fault suite's harness (``tests/faults/harness.py``) for longer: the simulator, daphne and two Celery
workers on the benchmark database and a private redis-server (so Redis itself can be restarted), four
agents with their consoles open, calls at ``--rate`` a second, and every ``--fault-every`` seconds the
next fault of ``Faults.KINDS`` (the PBX's 503 outage lasts ``--outage-seconds``, a minute by default).
When ``--minutes`` are up the traffic stops, everything settles, and every call the simulator made is
checked against ctihub's database, retailCRM's events and uploads, and every console.

    .venv/bin/python -m bench.soak --minutes 5

Bounded in time (the run stops by itself), loopback only. One ``name: value`` line per figure; the
exit status is 1 if any call was lost or doubled or a console was left stale.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

from bench.common import figure, percentiles, setup_django
from tests.faults.harness import Faults

KINDS = Faults.KINDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long calls and faults go on")
    parser.add_argument("--rate", type=float, default=2.0, help="new calls per second")
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds between faults")
    parser.add_argument("--outage-seconds", type=float, default=60.0, help="how long the PBX answers 503")
    parser.add_argument("--faults", default=",".join(KINDS), help="comma-separated kinds, in order")
    parser.add_argument("--settle", type=float, default=180.0, help="seconds allowed to settle at the end")
    args = parser.parse_args()
    kinds = [kind.strip() for kind in args.faults.split(",") if kind.strip()]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")

    setup_django()
    ok = soak(args, kinds)
    sys.exit(0 if ok else 1)


def soak(args, kinds: list[str]) -> bool:
    from bench.procs import hub_env
    from tests.faults.harness import (
        Consoles,
        PrivateRedis,
        Traffic,
        check_invariant,
        fault_settings,
        seed_world,
        start_hub,
    )

    redis_server = PrivateRedis().start()
    hub = None
    try:
        hub = start_hub(hub_env(**fault_settings(REDIS_URL=redis_server.url, LOG_LEVEL="WARNING")))
        world = seed_world(hub)
        started = time.monotonic()
        with Consoles(world) as consoles:
            faults = Faults(world, consoles, redis=redis_server, outage_seconds=args.outage_seconds,
                            recovery_timeout=max(60.0, args.outage_seconds + 60))
            failed: list[str] = []
            with Traffic(world, calls_per_second=args.rate) as traffic:
                deadline = started + args.minutes * 60
                schedule = itertools.cycle(kinds)
                while time.monotonic() + args.fault_every < deadline:
                    time.sleep(args.fault_every)
                    kind = next(schedule)
                    try:
                        faults.inject(kind)
                    except Exception as exc:  # a fault the hub did not recover from is a finding, not a crash
                        failed.append(f"{kind}: {exc.__class__.__name__}: {exc}")
                        print(f"# {kind} not recovered from: {exc}", flush=True)
                time.sleep(max(0.0, deadline - time.monotonic()))
            figures = check_invariant(world, traffic, consoles, settle=args.settle, assert_clean=False)
        figure("minutes", round((time.monotonic() - started) / 60, 2))
        figure("faults_injected", sum(faults.injected.values()))
        for kind in kinds:
            figure(f"faults_{kind}", faults.injected[kind])
        figure("faults_not_recovered", len(failed))
        figure("calls_placed", traffic.started)
        for line in figures.lines():
            print(line, flush=True)
        figure("duplicates", figures.duplicated_records + figures.duplicated_events + figures.duplicated_uploads)
        percentiles(consoles.reconnects_ms, "console_reconnect")
        if faults.takeovers_s:
            figure("worker_takeover_max", max(faults.takeovers_s), "s")
        for problem in figures.problems[:20]:
            print(f"# {problem}", flush=True)
        for failure in failed:
            print(f"# {failure}", flush=True)
        lost = sum(getattr(figures, name) for name in figures.LOSS_FIGURES)
        return lost == 0 and not failed
    finally:
        if hub is not None:
            hub.stop()
        redis_server.cleanup()


if __name__ == "__main__":
    from bench.common import run

    run(main)
