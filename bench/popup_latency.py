"""Benchmark 1: pop-up latency, from the simulated PBX sending a frame to the agent's socket getting the card.

    .venv/bin/python -m bench.popup_latency [--agents 1000] [--terminals 100] [--rate 100] [--seconds 20]

Real parts: the simulator (myCrm, one socket per terminal), one Celery worker
holding those sockets, daphne, PostgreSQL and Redis. ``--agents`` authenticated
console websockets are connected (the first ``--terminals`` of them own a
terminal). The load is ``--rate`` PBX events per second across the terminals:
each call rings, is answered and hangs up (one frame each). A frame's send time
is taken just before the control request that makes the simulator send it, so
the figure also holds that request's own round trip (it overstates, never
understates). Lost: an expected card that never reached its agent; duplicated: the
same card version reaching the same socket twice.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

from bench.common import figure, no_pauses_of_our_own, percentiles, setup_django

STATES = ("ringing", "talking", "ended")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--terminals", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    setup_django()
    from bench.procs import BenchHub, hub_env
    from tests.support.processes import wait_for

    hub = BenchHub(hub_env(LISTENER_SCAN_SECONDS="1"))
    try:
        hub.start_simulator()
        terminals = _world(hub, args)
        hub.start_web()
        hub.start_worker()
        from telephony.models import Listener

        wait_for(lambda: Listener.objects.filter(state="connected").count() >= args.terminals, 120, interval=0.5,
                 what="every terminal's listener connected")
        cookies = _sessions(args.agents)
        with no_pauses_of_our_own():
            result = asyncio.run(_run(hub, args, terminals, cookies))
    finally:
        hub.stop()
    sent, received, duplicates = result
    latencies = []
    lost = 0
    for key, t0 in sent.items():
        t1 = received.get(key)
        if t1 is None:
            lost += 1
        else:
            latencies.append((t1 - t0) * 1000)
    figure("agents_connected", args.agents)
    figure("frames_sent", len(sent))
    figure("cards_lost", lost, "", "0")
    figure("cards_duplicated", duplicates, "", "0")
    percentiles(latencies, "popup_latency")


def _world(hub, args) -> list[tuple[str, int]]:
    """A myCrm user with ``terminals`` terminals at the simulator and in ctihub, each with its agent."""
    from django.contrib.auth import get_user_model

    from accounts.models import Agent
    from telephony import control
    from telephony.models import PbxAccount, Terminal
    from tests.support.sim_control import IstraControl

    sim = IstraControl(hub.sim_url)
    sim.add_user("bench", "bench-pass", mycrm=True)
    ids = [str(5985841581756135000 + t) for t in range(args.terminals)]
    for t, pbx_id in enumerate(ids):
        sim.add_extension(pbx_id, str(1000 + t), owner="bench")
    account = PbxAccount.objects.create(name="bench", kind=PbxAccount.Kind.ISTRA_MYCRM,
                                        base_url=f"{hub.sim_url}/restletrouter", login="bench", password="bench-pass")
    control.sync_terminals(account)
    User = get_user_model()
    User.objects.bulk_create(User(username=f"agent{n}") for n in range(args.agents))
    users = {u.username: u for u in User.objects.filter(username__startswith="agent")}
    Agent.objects.bulk_create(Agent(user=users[f"agent{n}"], extension_code=str(1000 + n)) for n in range(args.agents))
    agents = {a.user.username: a for a in Agent.objects.select_related("user")}
    out = []
    for t, pbx_id in enumerate(ids):
        agent = agents[f"agent{t}"]
        Terminal.objects.filter(account=account, pbx_id=pbx_id).update(agent=agent)
        out.append((pbx_id, agent.pk))
    return out


def _sessions(count: int) -> list[str]:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    cookies = []
    for user in get_user_model().objects.filter(username__startswith="agent").order_by("id")[:count]:
        store = SessionStore()
        store[SESSION_KEY] = str(user.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = user.get_session_auth_hash()
        store.create()
        cookies.append(f"{settings.SESSION_COOKIE_NAME}={store.session_key}")
    return cookies


async def _run(hub, args, terminals, cookies):
    import aiohttp

    received: dict[tuple[str, str], float] = {}
    versions_seen: dict[int, set] = collections.defaultdict(set)
    duplicates = 0
    ws_url = hub.web_url.replace("http", "ws") + "/ws/console/"

    async def agent_socket(n: int, session: aiohttp.ClientSession, ready: asyncio.Event, counter: list[int]):
        nonlocal duplicates
        async with session.ws_connect(ws_url, headers={"Cookie": cookies[n], "Origin": hub.web_url},
                                      max_msg_size=0) as ws:
            await ws.receive_json()  # the snapshot
            counter[0] += 1
            if counter[0] == len(cookies):
                ready.set()
            async for message in ws:
                now = time.time()
                data = message.json()
                if data.get("type") != "card":
                    continue
                card = data["card"]
                key = (card["id"], card["version"])
                if key in versions_seen[n]:
                    duplicates += 1
                versions_seen[n].add(key)
                received.setdefault((card["remote_number"], card["state"]), now)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        ready, counter = asyncio.Event(), [0]
        tasks = [asyncio.ensure_future(agent_socket(n, session, ready, counter)) for n in range(len(cookies))]
        await asyncio.wait_for(ready.wait(), timeout=120)
        sent = await _traffic(session, hub.sim_url, args, terminals)
        await asyncio.sleep(5)  # let the last cards arrive
        for task in tasks:
            task.cancel()
    return sent, received, duplicates


async def _traffic(session, sim_url, args, terminals) -> dict[tuple[str, str], float]:
    """``rate`` moves a second: each terminal's call rings, then is answered, then hangs up."""
    base = f"{sim_url}/_sim/istra"
    sent: dict[tuple[str, str], float] = {}
    calls: collections.deque = collections.deque()  # (number, call id, next state index)
    deadline = time.monotonic() + args.seconds
    interval = 1.0 / args.rate
    n = 0
    next_at = time.monotonic()
    pending = []

    async def move(number, call_id, state_index, terminal_id):
        t0 = time.time()
        if state_index == 0:
            async with session.post(f"{base}/calls/incoming", json={"terminalId": terminal_id, "from": number}) as r:
                call_id = (await r.json())["callId"]
        else:
            verb = "answer" if state_index == 1 else "hangup"
            async with session.post(f"{base}/calls/{call_id}/{verb}", json={}) as r:
                await r.read()
        sent[(number, STATES[state_index])] = t0
        if state_index < 2:
            calls.append((number, call_id, state_index + 1, terminal_id))

    free = collections.deque(terminals)
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now < next_at:
            await asyncio.sleep(next_at - now)
        next_at += interval
        if calls and (not free or n % 3):
            number, call_id, index, terminal_id = calls.popleft()
            if index == 2:
                free.append((terminal_id, None))
            pending.append(asyncio.ensure_future(move(number, call_id, index, terminal_id)))
        elif free:
            terminal_id, _ = free.popleft()
            n += 1
            number = f"+336{n:08d}"
            pending.append(asyncio.ensure_future(move(number, None, 0, terminal_id)))
        else:
            n += 1
    await asyncio.gather(*pending)
    return sent


if __name__ == "__main__":
    from bench.common import run

    run(main)
