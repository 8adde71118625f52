"""Several daphne processes on one port (``WEB_PROCESSES``, ``ctihub/web.py``), on real processes.

The kernel hands connections to both children; a console gets its snapshot and the worker's cards whichever
child holds its socket; a child killed under steady calls costs its consoles a reconnect of seconds to the
other one, and the supervisor replaces it; SIGTERM stops every child, and a supervisor killed outright
leaves no child behind.

Which child serves a console is chosen here by pausing the other one (SIGSTOP) while the console connects:
only a running child accepts from the shared socket.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import time
from urllib.parse import urlencode

import psutil
import pytest
import requests
import websocket

from tests.faults.harness import Consoles, Traffic, check_invariant, fault_settings
from tests.support.consoles import Console
from tests.support.processes import daphne_process, free_port, http_ok, subprocess_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]

PROCESSES = 2
RECONNECT_BOUND_MS = 5000
# The module's hub (tests/faults/conftest.py): one worker, a daphne supervisor with PROCESSES children.
HUB_WORKERS = 1


def web_settings(**extra: str) -> dict[str, str]:
    # No periodic resync of the consoles: a card must reach them through the channel layer, not a database read.
    return fault_settings(WEB_PROCESSES=str(PROCESSES), CONSOLE_RESYNC_SECONDS="3600", **extra)


HUB_SETTINGS = web_settings


def web_children(web, but: tuple[int, ...] = ()) -> list[psutil.Process]:
    """The supervisor's daphne children once there are ``PROCESSES`` of them, none of the pids ``but``."""
    supervisor = psutil.Process(web.process.pid)

    def children():
        found = [child for child in supervisor.children() if child.status() != psutil.STATUS_ZOMBIE]
        return len(found) == PROCESSES and not {child.pid for child in found} & set(but) and found

    return wait_for(children, 60, interval=0.2, what=f"{PROCESSES} daphne children")


def served_ports(child: psutil.Process, port: int) -> set[int]:
    """The client ports of the connections ``child`` accepted on ``port``."""
    return {c.raddr.port for c in child.net_connections(kind="tcp")
            if c.laddr.port == port and c.raddr and c.status == psutil.CONN_ESTABLISHED}


@contextlib.contextmanager
def paused(processes: list[psutil.Process]):
    for process in processes:
        process.suspend()
    try:
        yield
    finally:
        for process in processes:
            process.resume()


class SeatConsole(Console):
    """``Console`` with a seat's session made while seeding (this module's own writes are unseen by the hub)."""

    def __init__(self, hub, seat, timeout: float = 10):
        self.ws = websocket.create_connection(f"{hub.web_url.replace('http', 'ws', 1)}/ws/console/",
                                              header=[f"Cookie: {seat.cookie}"], origin=hub.web_url,
                                              timeout=timeout)
        self.messages = [json.loads(self.ws.recv())]
        self._requests = 0

    @property
    def port(self) -> int:
        return self.ws.sock.getsockname()[1]


def test_it_spreads_connections_over_every_web_process(fault_hub):
    children = web_children(fault_hub.web)
    held: list[socket.socket] = []
    try:
        def every_child_serves() -> bool:
            held.extend(socket.create_connection(("127.0.0.1", fault_hub.web_port), timeout=5) for _ in range(20))
            time.sleep(0.3)  # accepted by now
            return all(served_ports(child, fault_hub.web_port) for child in children)

        wait_for(every_child_serves, 30, interval=0, what="connections accepted by every child")
    finally:
        for sock in held:
            sock.close()


def test_it_runs_each_web_process_in_a_session_of_its_own(fault_hub):
    # Linux's autogroup shares a busy core between sessions: in their supervisor's session, two children
    # together got the CPU of one process whenever anything else wanted the cores.
    children = web_children(fault_hub.web)
    assert [os.getsid(child.pid) for child in children] == [child.pid for child in children]
    assert os.getsid(fault_hub.web.process.pid) not in {child.pid for child in children}


def test_it_shares_a_burst_of_connections_between_its_web_processes(fault_hub):
    # A burst of keep-alive connections (a proxy's pool, retailCRM's clicks) is shared, not taken by whichever
    # child woke first: their requests stay where the connection went for as long as it lives.
    children = web_children(fault_hub.web)
    counts = [0] * len(children)
    for _burst in range(3):
        held = [socket.create_connection(("127.0.0.1", fault_hub.web_port), timeout=5) for _ in range(20)]
        try:
            wait_for(lambda: sum(len(served_ports(child, fault_hub.web_port)) for child in children) >= 20, 10,
                     interval=0.05, what="the burst accepted")
            for n, child in enumerate(children):
                counts[n] += len(served_ports(child, fault_hub.web_port))
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: not any(served_ports(child, fault_hub.web_port) for child in children), 10,
                 interval=0.05, what="the burst's connections closed")
    assert min(counts) >= 60 // 3, counts


def test_it_gives_consoles_on_either_web_process_their_snapshot_and_the_workers_cards(fault_world):
    hub, seat = fault_world.hub, fault_world.seats[0]
    first, second = web_children(hub.web)
    with paused([second]):
        on_first = SeatConsole(hub, seat)
    assert on_first.messages[0]["type"] == "snapshot"
    assert on_first.port in served_ports(first, hub.web_port)

    line = fault_world.istra.incoming(seat.extension_id, "+33612345670")
    ringing = on_first.card("ringing")  # published by the worker, delivered by the first child

    with paused([first]):
        on_second = SeatConsole(hub, seat)
    assert on_second.port in served_ports(second, hub.web_port)
    snapshot = on_second.messages[0]
    assert snapshot["type"] == "snapshot"
    assert (ringing["id"], "ringing") in [(card["id"], card["state"]) for card in snapshot["calls"]]

    fault_world.istra.move(line["callId"], "hangup", cause="disconnect")
    for console in (on_first, on_second):
        assert console.card("ended")["id"] == ringing["id"]
        console.close()


def test_it_replaces_a_web_process_killed_under_calls_and_its_consoles_reconnect_within_seconds(fault_world):
    hub = fault_world.hub
    doomed, survivor = web_children(hub.web)
    with paused([survivor]):
        consoles = Consoles(fault_world)
        consoles.start()
    try:
        console_ports = served_ports(doomed, hub.web_port)
        assert len(console_ports) >= len(consoles.views)  # every console is on the doomed child
        with Traffic(fault_world, calls_per_second=2.0, seed=31) as traffic:
            traffic.wait_for_calls(3)
            doomed.kill()
            wait_for(lambda: len(consoles.reconnects_ms) >= len(consoles.views), 30, interval=0.1,
                     what="every console to reconnect")
            replacement = next(c for c in web_children(hub.web, but=(doomed.pid,)) if c.pid != survivor.pid)
            traffic.wait_for_calls(3)
        assert max(consoles.reconnects_ms) <= RECONNECT_BOUND_MS, consoles.reconnects_ms
        figures = check_invariant(fault_world, traffic, consoles)
        assert figures.calls_checked >= 6
        # The replacement serves too: a console it accepts gets its snapshot.
        with paused([survivor]):
            late = SeatConsole(hub, fault_world.seats[0], timeout=30)  # the replacement may still be starting
        assert late.port in served_ports(replacement, hub.web_port)
        late.close()
    finally:
        consoles.stop()
    assert "exited (code -9)" in hub.web.log()


def test_it_places_a_makecallurl_call_whichever_web_process_answers(fault_world):
    from crm_sync.models import RetailCrmIntegration

    hub, seat = fault_world.hub, fault_world.seats[1]
    client_id = RetailCrmIntegration.objects.get(pk=fault_world.integration_id).client_id
    path = "/api/retailcrm/make-call?" + urlencode(
        {"clientId": client_id, "code": seat.number, "userId": seat.crm_user_id, "phone": "+33612345671"})
    children = web_children(hub.web)
    try:
        for child in children:
            with paused([other for other in children if other is not child]):
                connection = http.client.HTTPConnection("127.0.0.1", hub.web_port, timeout=30)
                connection.request("GET", path)
                answer = connection.getresponse()
                body = answer.read()
                assert connection.sock.getsockname()[1] in served_ports(child, hub.web_port)  # kept alive
                connection.close()
            assert answer.status == 200, body
            assert json.loads(body)["success"] is True
    finally:
        for line in fault_world.istra.calls():
            if line["state"] != "dropped":
                fault_world.istra.move(line["callId"], "hangup", cause="disconnect")


@pytest.fixture
def lone_web(fault_db, django_db_blocker):
    """A daphne supervisor of its own (no worker, no simulator), to stop or kill."""
    with django_db_blocker.unblock():
        env = subprocess_env(**web_settings())
    port = free_port()
    web = daphne_process(port, env)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 60, what="daphne")
        web.port = port
        yield web
    finally:
        web.stop()


def test_it_stops_every_web_process_on_sigterm_with_the_access_log_still_masked(lone_web):
    children = web_children(lone_web)
    client_id = "cid-web-processes-4f1b9e"
    for _ in range(4):  # whichever children answer, each writes the masked log line
        answer = requests.get(f"http://127.0.0.1:{lone_web.port}/api/retailcrm/make-call",
                              params={"clientId": client_id, "code": "1", "userId": "1", "phone": "+33612345678"},
                              timeout=10)
        assert answer.status_code == 403

    os.kill(lone_web.process.pid, signal.SIGTERM)  # the supervisor only, as `docker stop` does
    assert lone_web.process.wait(timeout=30) == 0
    for child in children:
        assert not psutil.pid_exists(child.pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", lone_web.port), timeout=2)
    log = lone_web.log()
    assert client_id not in log and log.count("clientId=***") >= 4
    assert "Traceback" not in log and "did not stop" not in log  # each child stopped when told, none killed


def test_it_leaves_no_web_process_behind_when_the_supervisor_is_killed(lone_web):
    children = web_children(lone_web)
    os.kill(lone_web.process.pid, signal.SIGKILL)
    lone_web.process.wait(timeout=10)
    _gone, alive = psutil.wait_procs(children, timeout=20)
    for child in alive:
        child.kill()  # not to outlive the test when it fails
    assert not alive, [child.pid for child in alive]
