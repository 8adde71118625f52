"""daphne's consoles kept out of the collector's full walks (ctihub/lib/console_heap.py)."""

import asyncio

from ctihub.lib import console_heap


class FakeGc:
    def __init__(self):
        self.calls = []

    def freeze(self):
        self.calls.append("freeze")

    def unfreeze(self):
        self.calls.append("unfreeze")

    def collect(self, generation=2):
        self.calls.append(f"collect{generation}")


def run(steps, monkeypatch, wait=0.15, settle=0.05):
    """``steps``: "up" (a console set up), "close", or a pause in seconds; then waits ``wait``. A wave has
    settled after ``settle`` seconds without a set-up."""
    monkeypatch.setattr(console_heap, "FREEZE_AFTER_SECONDS", settle)
    gc = FakeGc()

    async def scenario():
        heap = console_heap.ConsoleHeap(asyncio.get_running_loop(), gc=gc)
        for step in steps:
            if step == "up":
                heap.set_up()
            elif step == "close":
                heap.closed()
            else:
                await asyncio.sleep(step)
        await asyncio.sleep(wait)
        return heap

    heap = asyncio.run(scenario())
    return gc.calls, heap


def test_it_freezes_a_wave_of_console_setups_once_it_has_settled(monkeypatch):
    """At 1,000 consoles a full collection stopped daphne 130-190 ms: a settled wave is frozen out of it."""
    # A 20 ms pause inside a wave that settles after 0.5 s: a process stalled for 30 ms in the pause (CPU
    # throttled to 0.9 of two cores) saw a settle of 50 ms pass, and froze twice, rightly by its clock.
    calls, heap = run(["up"] * 300 + [0.02] + ["up"] * 300, monkeypatch, wait=0.7, settle=0.5)
    assert calls == ["collect1", "freeze"]  # once, after the last setup of the wave; no full collection
    assert heap.live == 600


def test_it_keeps_freezing_during_a_storm_longer_than_its_bound(monkeypatch):
    monkeypatch.setattr(console_heap, "FREEZE_AT_MOST_AFTER_SECONDS", 0.1)
    calls, _heap = run(["up", 0.03] * 10, monkeypatch)  # setups 30 ms apart for 300 ms: never settled
    assert 2 <= calls.count("freeze") <= 4, calls


def test_it_collects_once_after_a_quarter_of_the_consoles_closed(monkeypatch):
    """Frozen, a closed console's objects held in a cycle wait for a collection: after enough closes."""
    monkeypatch.setattr(console_heap, "THAW_AT_LEAST", 10)
    calls, heap = run(["up"] * 100 + [0.1] + ["close"] * 24, monkeypatch)
    assert calls == ["collect1", "freeze"]  # 24 of 100 closed: left frozen
    calls, heap = run(["up"] * 100 + [0.1] + ["close"] * 25, monkeypatch)
    assert calls == ["collect1", "freeze", "unfreeze", "collect2", "collect1", "freeze"]
    assert heap.live == 75 and heap.closed_since_thaw == 0


def test_it_does_nothing_in_the_tests_own_process_unless_asked(settings):
    async def which():
        return console_heap.console_heap()

    settings.CONSOLE_HEAP_FREEZE = False
    assert isinstance(asyncio.run(which()), console_heap._Off)
    settings.CONSOLE_HEAP_FREEZE = True
    assert isinstance(asyncio.run(which()), console_heap.ConsoleHeap)
