"""When each call card passed each stage of its way to a browser, for the pop-up benchmark (``CARD_TRACE``).

Off in production. With ``CARD_TRACE=true`` (``bench.popup_latency`` sets it for its processes) the card's
message carries a ``trace``, a dict of wall-clock times (``time.time()``; the benchmark's processes share
one machine, so one clock) stamped on the way:

- ``received``: the worker read the frame off the PBX socket (the burst's first frame);
- ``handed``: the frame's transaction committed and its card was handed to the publisher's thread;
- ``taken``: the publisher's thread took it off its queue;
- ``pushed``: the publisher read the groups' members (one Redis round trip) and is writing the message
  to the channels (the second round trip);
- ``fetched``: daphne's channel layer took it off Redis (``ctihub.lib.channel_layer``);
- ``sent``: the console consumer handed it to its websocket (daphne's event loop).

The console sends the trace beside the card (``{"type": "card", "card": ..., "trace": ...}``); the page
ignores it. A late card then says where it waited: the stall that a p99 hides is named by its stage.
"""

from __future__ import annotations

import contextlib
import threading
import time

from django.conf import settings

_local = threading.local()


def enabled() -> bool:
    return settings.CARD_TRACE


@contextlib.contextmanager
def frame_received(received_monotonic: float):
    """Cards published in the block (on this thread: the transaction's on-commit) were read at this time."""
    previous = getattr(_local, "received", None)
    _local.received = received_monotonic
    try:
        yield
    finally:
        _local.received = previous


def new_trace() -> dict | None:
    """A trace for a card handed over now, or None when tracing is off."""
    if not settings.CARD_TRACE:
        return None
    now = time.time()
    trace = {"handed": now}
    received = getattr(_local, "received", None)
    if received is not None:
        trace["received"] = now - (time.monotonic() - received)
    return trace


def stamp(message: dict, stage: str) -> None:
    trace = message.get("trace")
    if trace is not None:
        trace[stage] = time.time()


# --- the process's own pauses -----------------------------------------------------------------------

PAUSES_KEY = "ctihub:trace:pauses"
PAUSE_MIN_SECONDS = 0.005
_pauses = None  # a deque while watched
_process = ""


def note_pause(kind: str, start: float, seconds: float, cpu_seconds: float | None = None) -> None:
    """Something that held this process (or its event loop) from ``start`` (wall clock) for ``seconds``, of
    which ``cpu_seconds`` its thread's own CPU (a busy machine stretches the wall time, not the CPU)."""
    if _pauses is not None and seconds >= PAUSE_MIN_SECONDS:
        cpu = seconds if cpu_seconds is None else cpu_seconds
        _pauses.append(f"{_process} {kind} {start:.4f} {seconds:.4f} {cpu:.4f}")


def watch_pauses(process: str) -> None:
    """With ``CARD_TRACE``: each garbage collection of this process that stopped it for at least
    ``PAUSE_MIN_SECONDS`` (and what else ``note_pause`` is told of), pushed to Redis (``PAUSES_KEY``:
    "process kind start seconds cpu_seconds") once a second by a thread of its own, for the benchmark to put beside
    its late cards."""
    global _pauses, _process
    if not settings.CARD_TRACE or _pauses is not None:
        return
    import gc
    from collections import deque

    _pauses, _process = deque(maxlen=10_000), process
    started: list[float] = [0.0, 0.0]

    def collected(phase: str, info: dict) -> None:
        if phase == "start":
            started[:] = time.perf_counter(), time.thread_time()
            return
        took = time.perf_counter() - started[0]
        note_pause(f"gc{info.get('generation')}", time.time() - took, took, time.thread_time() - started[1])

    gc.callbacks.append(collected)
    pauses = _pauses

    def flush() -> None:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
        while True:
            time.sleep(1.0)
            batch = [pauses.popleft() for _ in range(len(pauses))]
            if batch:
                try:
                    client.rpush(PAUSES_KEY, *batch)
                except Exception:  # a diagnosis, never a reason to fail
                    pass

    threading.Thread(target=flush, name="card-trace-pauses", daemon=True).start()
    watch_thread_lag()


LAG_PROBE_SECONDS = 0.01
_loops_watched: set = set()


def watch_thread_lag() -> None:
    """With ``CARD_TRACE``: a thread that sleeps ``LAG_PROBE_SECONDS`` at a time and notes ("lag") each wake-up
    late by 5 ms or more: the process could not run a thread that long (no core, or the GIL held)."""
    if _pauses is None:
        return

    def probe() -> None:
        while True:
            asked = time.perf_counter() + LAG_PROBE_SECONDS
            cpu = time.thread_time()
            time.sleep(LAG_PROBE_SECONDS)
            late = time.perf_counter() - asked
            note_pause("lag", time.time() - late, late, time.thread_time() - cpu)

    threading.Thread(target=probe, name="card-trace-lag", daemon=True).start()


def watch_loop_lag() -> None:
    """With ``CARD_TRACE``, in an event loop: notes ("loop_lag") each turn of it late by 5 ms or more."""
    if _pauses is None:
        return
    import asyncio

    loop = asyncio.get_running_loop()
    if loop in _loops_watched:
        return
    _loops_watched.add(loop)

    async def probe() -> None:
        while True:
            asked = time.perf_counter() + LAG_PROBE_SECONDS
            await asyncio.sleep(LAG_PROBE_SECONDS)
            late = time.perf_counter() - asked
            note_pause("loop_lag", time.time() - late, late, 0.0)

    loop.create_task(probe())
