"""Benchmark 3: PBX sockets one worker process holds, the memory each costs, and keep-alives on time.

    .venv/bin/python -m bench.sockets_per_worker [--sockets 2000] [--keepalive 10] [--hold 30]

The listener supervisor runs in this process exactly as the worker bootstep runs
it, holding one myCrm socket per terminal to the simulator (a separate process).
RSS is read before the supervisor starts and once every socket is connected;
the difference over the socket count is the cost of one socket (its thread, its
session, its websocket). Keep-alives are timed where the listener sends them:
``keepalive_max_gap`` is the longest gap seen between two keep-alives of one
socket, ``first_keepalive_max_delay`` the longest from a socket's opening (the
websocket handshake, before the listener is bound) to its first keep-alive,
both against the configured interval.
"""

from __future__ import annotations

import argparse
import collections
import os
import threading
import time

from bench.common import figure, setup_django


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--keepalive", type=float, default=10.0)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--connect-concurrency", type=int, default=None,
                        help="logins at once (default: telephony.sockets.supervisor.CONNECT_CONCURRENCY)")
    args = parser.parse_args()
    os.environ.update(LISTENER_KEEPALIVE_SECONDS=str(int(args.keepalive)), LISTENER_SCAN_SECONDS="2",
                      LISTENER_LEASE_TTL_MS="30000")
    setup_django()
    import psutil

    from bench.procs import BenchHub, hub_env
    from telephony import control
    from telephony.models import Listener, PbxAccount
    from telephony.providers import base
    from telephony.sockets import supervisor as supervisor_module
    from telephony.sockets.supervisor import Supervisor
    from tests.support.processes import wait_for
    from tests.support.sim_control import IstraControl

    gaps: dict[int, float] = collections.defaultdict(float)
    holding_gaps: dict[int, float] = collections.defaultdict(float)  # of keep-alives sent once all were connected
    all_connected = threading.Event()
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    sent: dict[int, int] = collections.defaultdict(int)
    lock = threading.Lock()
    real_keepalive = base.WebSocketStream.keepalive
    real_init = base.WebSocketStream.__init__

    def timed_init(stream, *args, **kwargs):
        real_init(stream, *args, **kwargs)
        with lock:
            last[id(stream)] = time.monotonic()  # the first keep-alive is due one interval after the opening

    def timed_keepalive(stream):
        now = time.monotonic()
        with lock:
            if sent[id(stream)] == 0:
                first[id(stream)] = now - last[id(stream)]
            else:
                gaps[id(stream)] = max(gaps[id(stream)], now - last[id(stream)])
                if all_connected.is_set():
                    holding_gaps[id(stream)] = max(holding_gaps[id(stream)], now - last[id(stream)])
            last[id(stream)] = now
            sent[id(stream)] += 1
        return real_keepalive(stream)

    base.WebSocketStream.keepalive = timed_keepalive
    base.WebSocketStream.__init__ = timed_init
    hub = BenchHub(hub_env())
    supervisor = None
    try:
        hub.start_simulator()
        sim = IstraControl(hub.sim_url)
        sim.add_user("bench", "bench-pass", mycrm=True)
        for t in range(args.sockets):
            sim.add_extension(str(5985841581756135000 + t), str(10000 + t), owner="bench")
        account = PbxAccount.objects.create(name="bench", kind=PbxAccount.Kind.ISTRA_MYCRM, login="bench",
                                            password="bench-pass", base_url=f"{hub.sim_url}/restletrouter")
        control.sync_terminals(account)
        process = psutil.Process()
        rss_before = process.memory_info().rss
        started = time.monotonic()
        if args.connect_concurrency:
            supervisor_module.CONNECT_CONCURRENCY = args.connect_concurrency
        supervisor = Supervisor(owner="bench")
        supervisor.start()
        wait_for(lambda: Listener.objects.filter(state="connected").count() >= args.sockets, 600, interval=1,
                 what="every socket connected")
        connect_seconds = time.monotonic() - started
        all_connected.set()
        time.sleep(args.hold)
        connected = Listener.objects.filter(state="connected").count()
        rss_after = process.memory_info().rss
        threads = threading.active_count()
    finally:
        if supervisor is not None:
            supervisor.stop(timeout=60)
        hub.stop()
    per_socket_kib = (rss_after - rss_before) / 1024 / max(1, args.sockets)
    figure("sockets_held", connected, "", f">= {args.sockets}")
    figure("connect_all_seconds", connect_seconds, "s")
    figure("connect_concurrency", supervisor_module.CONNECT_CONCURRENCY)
    figure("threads", threads)
    figure("rss_per_socket", per_socket_kib, "KiB", "<= 200")
    figure("keepalive_interval", args.keepalive, "s")
    figure("keepalive_max_gap", max(gaps.values(), default=0.0), "s", f"<= {args.keepalive * 1.5:.0f}")
    figure("keepalive_max_gap_once_connected", max(holding_gaps.values(), default=0.0), "s",
           f"<= {args.keepalive * 1.5:.0f}")
    figure("first_keepalive_max_delay", max(first.values(), default=0.0), "s", f"<= {args.keepalive * 1.5:.0f}")
    figure("sockets_with_two_keepalives", sum(1 for n in sent.values() if n >= 2))
    figure("load_average_1min", os.getloadavg()[0])


if __name__ == "__main__":
    from bench.common import run

    run(main)
