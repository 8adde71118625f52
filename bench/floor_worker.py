"""The floor of the worker's path of one live frame: what our own stack cannot do it for less.

    python -m bench.floor_worker [--units 300] [--rate 0] [--serve]

Started by ``bench.frame_cost`` with exactly the Celery worker's environment (``DEBUG=false``, the
database and Redis URLs, ``DATABASE_CONN_MAX_AGE``, the keys) and, as the worker does on
``worker_init``, the configured GIL switch interval. It does ``--units`` times: one ORM
transaction that stores one frame (a ``CallEvent`` row) and updates its call (state, version),
then one channels ``group_send`` of a card-sized message to a group that has a member, from one
long-lived event loop (as ``telephony.publish`` keeps one). It prints this process's CPU time per
unit, measured after a warm-up, as ``floor_cpu_per_frame``. Nothing here parses, logs or queues a
task: the worker's extra cost over it is what the frame path adds.

``--rate R`` paces the units at R a second, one at a time, as the benchmark sends the worker its
frames (0: back to back). The pace matters as much as the code: the same units cost 1.5-2.0 ms back
to back and 2.9-3.1 ms at 10 a second on the project's machine (each unit then finds the caches,
the branch predictors and the database's backend cold), so a worker fed 10 frames a second is
compared with a floor fed the same way. ``--serve`` keeps the process for rounds: each line
``UNITS RATE`` read from stdin runs that many units and answers ``CPU_SECONDS WALL_SECONDS``, so
``bench.frame_cost`` interleaves floor and worker rounds without a Django start-up between them.

It writes to the database it is given, under an account of its own (disabled, so no worker holds
a socket for it), and cleans up after itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

from bench.common import REPO

WARM_UP = 20
FLOOR_GROUP = "bench-floor"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=300)
    parser.add_argument("--rate", type=float, default=0.0, help="units a second, one at a time (0: back to back)")
    parser.add_argument("--serve", action="store_true", help="rounds asked for on stdin, one a line: UNITS RATE")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ctihub.settings")
    import django

    django.setup()
    from ctihub.lib.threads import use_configured_switch_interval

    use_configured_switch_interval()  # as ctihub/celery.py does on worker_init
    from channels.layers import get_channel_layer
    from django.db import transaction
    from django.db.models import F
    from django.utils import timezone

    from telephony.cards import call_card
    from telephony.models import Call, CallEvent, PbxAccount

    tag = uuid.uuid4().hex[:8]
    account = PbxAccount.objects.create(name=f"floor-{tag}", kind=PbxAccount.Kind.ISTRA_MYCRM, enabled=False,
                                        base_url="http://127.0.0.1:1/restletrouter")
    call = Call.objects.create(account=account, pbx_call_id=f"floor-{tag}", state=Call.State.RINGING,
                               direction=Call.Direction.INBOUND, remote_number_e164="+33612345678",
                               remote_number_raw="0612345678")
    loop = asyncio.new_event_loop()
    layer = get_channel_layer()
    # A member, so group_send pushes the message to a channel as it does to a console's.
    loop.run_until_complete(layer.group_add(FLOOR_GROUP, f"{FLOOR_GROUP}-member.{tag}"))
    payload = {"eventType": "call", "item": [{"callId": "-1", "state": "ringing", "displayNumber": "0612345678"}]}
    states = (Call.State.RINGING, Call.State.TALKING)

    def unit(n: int) -> None:
        now = timezone.now()
        with transaction.atomic():
            CallEvent.objects.create(call=call, kind="call", payload=payload, received_at=now,
                                     dedupe_key=f"floor-{tag}-{n}")
            Call.objects.filter(pk=call.pk).update(state=states[n % 2], version=F("version") + 1, updated_at=now)
        call.state, call.version = states[n % 2], call.version + 1
        card = call_card(call, {"crm": None})
        loop.run_until_complete(layer.group_send(FLOOR_GROUP, {"type": "call.card", "card": card}))

    done = 0

    def measure(units: int, rate: float) -> tuple[float, float]:
        """``units`` units, at ``rate`` a second if given: (CPU seconds of this process, wall seconds)."""
        nonlocal done
        started_cpu, started = time.process_time(), time.perf_counter()
        next_at = time.monotonic()
        for _ in range(units):
            if rate > 0:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at += 1.0 / rate
            unit(done)
            done += 1
        return time.process_time() - started_cpu, time.perf_counter() - started

    try:
        measure(WARM_UP, 0.0)
        if args.serve:
            print("ready", flush=True)
            for line in sys.stdin:
                units, rate = line.split()
                cpu, elapsed = measure(int(units), float(rate))
                print(f"{cpu:.9f} {elapsed:.6f}", flush=True)
            return
        cpu, elapsed = measure(args.units, args.rate)
    finally:
        loop.run_until_complete(layer.group_discard(FLOOR_GROUP, f"{FLOOR_GROUP}-member.{tag}"))
        loop.close()
        CallEvent.objects.filter(call=call).delete()
        call.delete()
        account.delete()
    print(f"floor_units: {args.units}", flush=True)
    print(f"floor_seconds: {elapsed:.2f} s", flush=True)
    print(f"floor_cpu_per_frame: {cpu / args.units * 1000:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
