"""The websocket side's batched reads (ctihub/lib/ws_db.py): consoles connecting together read together."""

from __future__ import annotations

import asyncio
import threading

from ctihub.lib.ws_db import Batched


def test_it_reads_the_calls_made_during_a_read_together_in_the_next():
    reads: list[list[int]] = []
    release = threading.Event()

    def read(items):
        reads.append(list(items))
        if len(reads) == 1:
            release.wait(5)  # the first read lasts while the others come
        return [item * 10 for item in items]

    batched = Batched(read, most=3)

    async def scenario():
        first = asyncio.ensure_future(batched(1))
        await asyncio.sleep(0.05)
        others = [asyncio.ensure_future(batched(n)) for n in range(2, 7)]
        await asyncio.sleep(0.05)
        release.set()
        return await first, await asyncio.gather(*others)

    first, others = asyncio.run(scenario())
    assert first == 10 and others == [20, 30, 40, 50, 60]
    assert reads == [[1], [2, 3, 4], [5, 6]]  # at most ``most`` a read


def test_it_fails_only_the_caller_whose_item_fails_and_leaves_out_one_that_gave_up():
    reads: list[list[str]] = []
    release = threading.Event()

    def read(items):
        reads.append(list(items))
        if items == ["first"]:
            release.wait(5)
        if "bad" in items:
            raise ValueError("a bad row")
        return [item.upper() for item in items]

    batched = Batched(read, most=10)

    async def scenario():
        first = asyncio.ensure_future(batched("first"))
        await asyncio.sleep(0.05)
        good, bad, gone = (asyncio.ensure_future(batched(item)) for item in ("good", "bad", "gone"))
        await asyncio.sleep(0.05)
        gone.cancel()  # its console closed while it waited
        release.set()
        results = await asyncio.gather(first, good, bad, return_exceptions=True)
        return results

    first, good, bad = asyncio.run(scenario())
    assert (first, good) == ("FIRST", "GOOD") and isinstance(bad, ValueError)
    assert reads == [["first"], ["good", "bad"], ["good"], ["bad"]]
