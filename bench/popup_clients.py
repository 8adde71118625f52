"""The pop-up benchmark's websocket clients: one process holds a share of the sockets, on one asyncio loop.

1,000 websockets, their handshakes and every card's JSON in the benchmark's own process cost it a
core at a few hundred events/s, and its lateness read as ctihub's. ``bench.popup_latency`` starts
several of these (``--clients``), each on its own core's worth of GIL, and drives them over a pipe:

- ``("connect", [(url, headers), ...], timeout)``: opens them all at once; answers each socket's
  connect-to-snapshot time and what went wrong with the others, by kind;
- ``("count",)``: how many cards arrived so far;
- ``("collect",)``: the first arrival time of each card key, duplicates, a sample card, the stage times of
  each card key's first arrival (``CARD_TRACE``: ``ctihub/lib/card_trace.py``, with ``client``: its arrival), then
  forgets them;
- ``("ping_start", every)``: from now on each socket open now pings as console.js does (its exact text)
  every ``every`` seconds, spread over the interval; answers at once;
- ``("ping_stop",)``: stops them and, after the last pongs' wait, answers the pings sent, the pongs received
  and each pong's round trip in ms;
- ``("close",)``: closes every socket and ends.

A card's key is ``(remote_number, state)``: the benchmark sends each number through each state once.
A duplicate is the same ``(id, version)`` reaching the same socket twice.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import threading
import time


def client_main(conn) -> None:
    gc.disable()  # its own pauses would read as ctihub's lateness (bench.common.no_pauses_of_our_own)
    asyncio.run(_Client(conn).serve())


class _Client:
    def __init__(self, conn):
        self.conn = conn
        self.received: dict[tuple, float] = {}
        self.traces: dict[tuple, dict] = {}
        self.count = 0
        self.duplicates = 0
        self.sample = None
        self.sockets = []
        self.tasks = []

    async def serve(self) -> None:
        import aiohttp

        loop = asyncio.get_running_loop()
        commands: asyncio.Queue = asyncio.Queue()

        def read():
            while True:
                try:
                    command = self.conn.recv()
                except EOFError:
                    command = ("close",)
                loop.call_soon_threadsafe(commands.put_nowait, command)
                if command[0] == "close":
                    return

        threading.Thread(target=read, daemon=True).start()
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as self.session:
            while True:
                command = await commands.get()
                if command[0] == "connect":
                    self.conn.send(await self.connect_all(command[1], command[2]))
                elif command[0] == "count":
                    self.conn.send(self.count)
                elif command[0] == "collect":
                    self.conn.send((self.received, self.duplicates, self.count, self.sample, self.traces))
                    self.received, self.duplicates, self.count, self.traces = {}, 0, 0, {}
                elif command[0] == "ping_start":
                    self.ping_start(command[1])
                    self.conn.send("started")
                elif command[0] == "ping_stop":
                    self.conn.send(await self.ping_stop())
                elif command[0] == "close":
                    for task in self.tasks:
                        task.cancel()
                    await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
                    self.conn.send("closed")
                    return

    async def connect_all(self, targets, timeout: float):
        """All at once: the connect storm of a deploy, every console reconnecting."""
        connected_ms: list[float] = []
        errors: collections.Counter = collections.Counter()
        opened = [asyncio.ensure_future(self.connect_one(url, headers, timeout, connected_ms, errors))
                  for url, headers in targets]
        done = await asyncio.gather(*opened)
        return connected_ms, dict(errors), [target for target, ok in zip(targets, done) if not ok]

    async def connect_one(self, url, headers, timeout, connected_ms, errors) -> bool:
        import aiohttp

        started = time.monotonic()
        try:
            ws = await asyncio.wait_for(self.session.ws_connect(url, headers=headers, max_msg_size=0), timeout)
        except aiohttp.WSServerHandshakeError as exc:
            errors[f"refused_http_{exc.status}"] += 1
            return False
        except TimeoutError:
            errors["no_handshake_in_time"] += 1
            return False
        except (aiohttp.ClientError, OSError) as exc:
            errors[f"connect_{type(exc).__name__}: {str(exc)[:60]}"] += 1
            return False
        try:
            message = await ws.receive(timeout=max(0.1, timeout - (time.monotonic() - started)))
        except TimeoutError:
            errors["no_snapshot_in_time"] += 1
            await ws.close()
            return False
        if message.type != aiohttp.WSMsgType.TEXT:
            errors[f"closed_before_snapshot_{ws.close_code}"] += 1
            return False
        if json.loads(message.data).get("type") != "snapshot":
            errors["first_message_not_a_snapshot"] += 1
        connected_ms.append((time.monotonic() - started) * 1000)
        self.sockets.append(ws)
        self.tasks.append(asyncio.ensure_future(self.listen(ws)))
        return True

    def ping_start(self, every: float) -> None:
        import random

        ping = '{"type":"ping"}'  # telephony.consumers.PING, as console.js sends it
        self.pinged, self.pong_ms, self.ping_every, sent = {}, [], every, [0]

        async def pinger(ws) -> None:
            await asyncio.sleep(random.uniform(0, every))  # the pages opened at different times
            while True:
                self.pinged[id(ws)] = time.monotonic()
                await ws.send_str(ping)
                sent[0] += 1
                await asyncio.sleep(every)

        self.pings_sent = sent
        self.pingers = [asyncio.ensure_future(pinger(ws)) for ws in self.sockets]

    async def ping_stop(self):
        for task in self.pingers:
            task.cancel()
        await asyncio.sleep(min(self.ping_every, 2.0))  # the last pings' pongs
        pong_ms, self.pong_ms, self.pinged = self.pong_ms, [], {}
        return self.pings_sent[0], len(pong_ms), pong_ms

    async def listen(self, ws) -> None:
        seen: set[tuple] = set()
        async for message in ws:
            now = time.time()
            data = json.loads(message.data)
            if data.get("type") == "pong":
                pinged = getattr(self, "pinged", {}).get(id(ws))
                if pinged is not None:
                    self.pong_ms.append((time.monotonic() - pinged) * 1000)
                continue
            if data.get("type") != "card":
                continue
            card = data["card"]
            self.count += 1
            version = (card["id"], card["version"])
            if version in seen:
                self.duplicates += 1
            seen.add(version)
            key = (card["remote_number"], card["state"])
            if key not in self.received:
                self.received[key] = now
                trace = data.get("trace")
                if trace is not None:
                    trace["client"] = now
                    self.traces[key] = trace
            if self.sample is None:
                self.sample = card
