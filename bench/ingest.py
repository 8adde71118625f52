"""Benchmark 2: PBX events one worker process turns into committed calls and published cards.

    .venv/bin/python -m bench.ingest [--calls 2000] [--terminals 50] [--threads 8] [--burst 200]

The frames are myCrm's, as the spec records them (ringing, talking, dropped),
re-numbered per call, one socket per terminal. They go through the same path as
a socket's frames: ``provider.parse_frame`` -> ``apply_call_updates`` (one
transaction on PostgreSQL per burst) -> on commit, every change's card published
on the real channels-redis layer and the CRM hand-off. A listener applies what
its socket has queued in one burst of at most ``--burst`` frames (the
supervisor's own cap); here every frame is queued from the start, so this is the
worker's capacity when it is behind. ``--burst 1`` is one transaction per frame.
``--threads`` is how many listener threads feed the process at once, each
taking turns over its sockets. The figure counts an event once its card has
been handed to Redis; per call, events are applied in order.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from bench.common import REPO, figure, setup_django

FIXTURES = REPO / "telephony/providers/istra_mycrm/tests/fixtures"
FRAMES = ("event_call_ringing.json", "event_call_talking.json", "event_call_dropped.json")


def frames_for(call_n: int, terminal_n: int) -> list[str]:
    out = []
    for name in FRAMES:
        frame = json.loads((FIXTURES / name).read_text())
        item = frame["item"][0]
        item.update(callId=f"-{call_n}", displayNumber=f"06{call_n:08d}", displayNumberE164=f"+336{call_n:08d}",
                    type="external")
        out.append(json.dumps(frame))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--terminals", type=int, default=50)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    setup_django()
    from ctihub.lib.threads import use_configured_switch_interval

    use_configured_switch_interval()  # as in a worker (ctihub/celery.py)
    from django.contrib.auth import get_user_model
    from django.db import connection

    from accounts.models import Agent
    from telephony import domain
    from telephony.models import Call, CallEvent, PbxAccount, Terminal
    from telephony.providers import provider_for
    from telephony.providers.base import ListenerSpec
    from telephony.publish import publisher

    account = PbxAccount.objects.create(name="bench", kind=PbxAccount.Kind.ISTRA_MYCRM, base_url="http://127.0.0.1:1/restletrouter")
    specs = []
    for t in range(args.terminals):
        user = get_user_model().objects.create_user(f"agent{t}")
        agent = Agent.objects.create(user=user, extension_code=str(1000 + t))
        terminal = Terminal.objects.create(account=account, pbx_id=str(5985841581756135000 + t), agent=agent)
        specs.append(ListenerSpec(name=f"l{t}", terminal_pbx_id=terminal.pbx_id))
    connection.close()
    # Each socket's frames in order (a terminal's calls one after another); threads share the sockets.
    queues: dict[int, list[str]] = {t: [] for t in range(len(specs))}
    for n in range(args.calls):
        queues[n % len(specs)].extend(frames_for(n + 1, n % len(specs)))
    work: list[list[tuple[ListenerSpec, list[str]]]] = [[] for _ in range(args.threads)]
    for t, frames in queues.items():
        work[t % args.threads].append((specs[t], frames))
    publisher.send([], {}).result(timeout=5)  # start the publishing loop before timing

    def feed(sockets):
        provider = provider_for(account)
        try:
            positions = [0] * len(sockets)
            while True:
                busy = False
                for i, (spec, frames) in enumerate(sockets):  # take turns, a burst from each socket
                    burst = frames[positions[i]:positions[i] + args.burst]
                    if not burst:
                        continue
                    busy = True
                    positions[i] += len(burst)
                    received = time.monotonic()
                    updates = [update for text in burst for update in provider.parse_frame(text, spec)]
                    domain.apply_call_updates(updates, received=received)
                if not busy:
                    return
        finally:
            connection.close()

    threads = [threading.Thread(target=feed, args=(items,)) for items in work]
    started = time.perf_counter()
    if len(threads) == 1:
        feed(work[0])  # inline, so a profiler sees it
    else:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    publisher.drain(timeout=60)  # every card has reached Redis
    elapsed = time.perf_counter() - started
    events = args.calls * len(FRAMES)
    stored_events = CallEvent.objects.count()
    ended = Call.objects.filter(state=Call.State.ENDED).count()
    figure("events", events)
    figure("events_stored", stored_events, "", str(events))
    figure("calls_ended", ended, "", str(args.calls))
    figure("burst", args.burst, "frames")
    figure("seconds", elapsed, "s")
    figure("ingest_events_per_second", events / elapsed, "events/s", ">= 1000")


if __name__ == "__main__":
    from bench.common import run

    run(main)
