"""Consoles in a real Chromium moving between web processes (``WEB_PROCESSES=2``) under steady calls.

``test_web_processes.py`` drives the websocket from Python; here it is the page's own reconnect logic
(``static/ctihub/console.js``: backoff, snapshot timer, version checks) that must bring an agent back, on
a real daphne supervisor, a real Celery worker and the simulator. Each page records what its sockets
received (a ``WebSocket`` wrapper added before the page's scripts) and what it shows (its ``ctihub:calls``
event); a reconnect is timed by the page's own clock, from its socket's close to its next snapshot. A socket
the page gives up on itself (its keep-alive: no pong in time) is recorded as dropped, and what it brings
afterwards as ignored, as console.js ignores it.

Which process serves a page is chosen by pausing the other one (SIGSTOP) while the page connects: only a
running child accepts from the shared socket. Holding the supervisor (SIGSTOP too) keeps a stopped child
from being replaced, so a page that reconnects meanwhile can only reach the other process.
"""

from __future__ import annotations

import collections
import time

import psutil
import pytest

from tests.faults.harness import ConsoleView, Traffic, check_invariant, p99
from tests.faults.test_web_processes import PROCESSES, RECONNECT_BOUND_MS, paused, web_children, web_settings
from tests.support.processes import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]

HUB_SETTINGS = web_settings
HUB_WORKERS = 1
# The product's promise for a hung web process: each console back, with its snapshot, within 10 s of the hang
# (console.js: a ping every 3 s, given up after 4 s without its pong, then a reconnect of about a second).
HUNG_BACK_BOUND_MS = 10000

# Before the page's own scripts: every socket console.js opens is a recorded one. Times are the page's clock.
RECORDER = """
(() => {
  const log = window.__ctihubSockets = { events: [], shown: null };
  const record = (event) => log.events.push({ t: Date.now(), ...event });
  const Native = window.WebSocket;
  let sockets = 0;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      const socket = this.socketNumber = sockets++;
      record({ socket, kind: "connect" });
      this.addEventListener("message", (event) => {
        const message = JSON.parse(event.data);
        if (this.dropped) { // console.js gave up on this socket and ignores what it still brings
          record({ socket, kind: "ignored", type: message.type });
          return;
        }
        if (message.type === "snapshot") {
          record({ socket, kind: "snapshot", calls: message.calls.map((c) => [c.id, c.version, c.state]) });
        } else if (message.type === "card") {
          record({ socket, kind: "card", card: [message.card.id, message.card.version, message.card.state] });
        }
      });
      this.addEventListener("close", (event) => record({ socket, kind: "close", code: event.code }));
    }

    // console.js closes a socket itself only when it gives up on it (no snapshot, or no pong, in time): it
    // reconnects at once and ignores the socket from then on, whenever its close event comes.
    close(...args) {
      if (!this.dropped && this.readyState !== Native.CLOSED) {
        this.dropped = true;
        record({ socket: this.socketNumber, kind: "drop" });
      }
      super.close(...args);
    }
  };
  // What the page shows once it applied a message (snapshot and version checks done): console.js's own state.
  document.addEventListener("ctihub:calls", (event) => {
    log.shown = event.detail.calls.map((c) => [c.id, c.version, c.state]);
  });
})();
"""


class BrowserConsoles:
    """One Chromium page per agent seat, read as ``harness.Consoles`` is (``views``, ``reconnects_ms``...)
    so that ``check_invariant`` compares what each page shows with the database."""

    def __init__(self, world, browser):
        self.world, self.hub = world, world.hub
        self.pages = []
        self._views = [ConsoleView(seat) for seat in world.seats]
        self._events: list[list[dict]] = []
        self.close_codes: collections.Counter = collections.Counter()
        self.snapshots_late = 0
        self.stopped = False
        for seat in world.seats:
            context = browser.new_context(viewport={"width": 900, "height": 600})
            name, value = seat.cookie.split("=", 1)
            context.add_cookies([{"name": name, "value": value, "url": self.hub.web_url}])
            page = context.new_page()
            page.add_init_script(RECORDER)
            page.goto(f"{self.hub.web_url}/")
            self.pages.append(page)
        for page in self.pages:
            page.wait_for_selector("#connection[data-state=live]", timeout=30000)

    def stop(self) -> None:
        self.stopped = True
        for page in self.pages:
            page.context.close()

    def sync(self) -> None:
        """Read every page's new events and what it shows."""
        for n, (page, view) in enumerate(zip(self.pages, self._views)):
            if n == len(self._events):
                self._events.append([])
            events = self._events[n]
            fresh, shown = page.evaluate(
                "(from) => [window.__ctihubSockets.events.slice(from), window.__ctihubSockets.shown]", len(events))
            events.extend(fresh)
            view.seen = collections.defaultdict(list)
            for event in events:
                if event["kind"] == "snapshot":
                    for call_id, version, state in event["calls"]:
                        view.seen[call_id].append(f"snapshot v{version} {state}")
                elif event["kind"] == "card":
                    call_id, version, state = event["card"]
                    view.seen[call_id].append(f"v{version} {state}")
            view.cards = {call_id: {"id": call_id, "version": version, "state": state}
                          for call_id, version, state in shown or []}
            view.snapshots = sum(event["kind"] == "snapshot" for event in events)
            last = max(event["socket"] for event in events)
            view.connected = any(e["socket"] == last and e["kind"] == "snapshot" for e in events) \
                and not any(e["socket"] == last and e["kind"] in ("close", "drop") for e in events)
        self.close_codes = collections.Counter(e["code"] for events in self._events for e in events
                                               if e["kind"] == "close")

    @property
    def views(self) -> list[ConsoleView]:
        self.sync()
        return self._views

    def all_connected(self) -> bool:
        return all(view.connected for view in self.views)

    @property
    def reconnects_ms(self) -> list[float]:
        """Per lost socket that had its snapshot: from its close (or the page giving up on it, whichever came
        first) to the page's next snapshot (page clock)."""
        self.sync()
        figures = []
        for events in self._events:
            lost_at, lost = None, set()
            for event in events:
                if event["kind"] in ("close", "drop") and event["socket"] not in lost \
                        and self._had_snapshot(events, event["socket"]):
                    lost.add(event["socket"])
                    lost_at = event["t"] if lost_at is None else lost_at
                elif event["kind"] == "snapshot" and lost_at is not None:
                    figures.append(event["t"] - lost_at)
                    lost_at = None
        return figures

    def snapshot_times(self) -> list[list[int]]:
        """Per page, the page-clock epoch ms of each snapshot it got."""
        self.sync()
        return [[e["t"] for e in events if e["kind"] == "snapshot"] for events in self._events]

    def ignored(self) -> int:
        self.sync()
        return sum(e["kind"] == "ignored" for events in self._events for e in events)

    def how_lost(self) -> list[dict[int, str]]:
        """Per page, for each socket it lost: "close" (its close event came first) or "drop" (the page gave up)."""
        self.sync()
        out = []
        for events in self._events:
            lost: dict[int, str] = {}
            for event in events:
                if event["kind"] in ("close", "drop"):
                    lost.setdefault(event["socket"], event["kind"])
            out.append(lost)
        return out

    @staticmethod
    def _had_snapshot(events, socket: int) -> bool:
        return any(e["socket"] == socket and e["kind"] == "snapshot" for e in events)

    def missed_cards(self) -> list[str]:
        """Versions a page never got while its socket was up: on each socket, a call's cards must follow on
        from the snapshot's version (or from 1, for a call the snapshot did not have) without a gap."""
        self.sync()
        problems = []
        for view, events in zip(self._views, self._events):
            by_socket = collections.defaultdict(list)
            for event in events:
                by_socket[event["socket"]].append(event)
            for socket, received in by_socket.items():
                known = {}
                for event in received:
                    if event["kind"] == "snapshot":
                        known = {call_id: version for call_id, version, _state in event["calls"]}
                    elif event["kind"] == "card":
                        call_id, version, state = event["card"]
                        if version > known.get(call_id, 0) + 1:
                            problems.append(f"{view.seat.username} socket {socket}: call {call_id} v{version} "
                                            f"({state}) after v{known.get(call_id, 0)}")
                        known[call_id] = max(version, known.get(call_id, 0))
        return problems

    def duplicated_cards(self) -> list[str]:
        """A card (call and version) delivered to one page twice, on any of its sockets, or a call shown twice."""
        self.sync()
        problems = []
        for view, events, page in zip(self._views, self._events, self.pages):
            delivered = collections.Counter(tuple(e["card"][:2]) for e in events if e["kind"] == "card")
            problems += [f"{view.seat.username}: call {call_id} v{version} delivered {count} times"
                         for (call_id, version), count in delivered.items() if count > 1]
            on_screen = collections.Counter(page.evaluate(
                "[...document.querySelectorAll('#cards [data-call]')].map((el) => el.dataset.call)"))
            problems += [f"{view.seat.username}: call {call_id} shown {count} times"
                         for call_id, count in on_screen.items() if count > 1]
        return problems

    def cards_received(self) -> int:
        self.sync()
        return sum(e["kind"] == "card" for events in self._events for e in events)


@pytest.fixture
def consoles_on(fault_world, browser):
    """``consoles_on(child)``: every seat's page, connected to ``child`` (the other children paused)."""
    opened = []

    def open_on(child):
        others = [c for c in web_children(fault_world.hub.web) if c.pid != child.pid]
        with paused(others):
            opened.append(BrowserConsoles(fault_world, browser))
        return opened[-1]

    yield open_on
    for consoles in opened:
        if not consoles.stopped:
            consoles.stop()


def check_every_card(world, traffic, consoles) -> None:
    figures = check_invariant(world, traffic, consoles)  # every page shows each call as the database has it
    assert figures.calls_checked >= 6, figures.lines()
    assert consoles.missed_cards() == []
    assert consoles.duplicated_cards() == []
    assert consoles.cards_received() >= figures.calls_checked  # the cards came live, not only in snapshots


def test_it_gives_a_console_that_moves_to_another_web_process_its_snapshot_and_every_later_card(
        fault_world, consoles_on):
    hub = fault_world.hub
    leaving, staying = web_children(hub.web)
    supervisor = psutil.Process(hub.web.process.pid)
    consoles = consoles_on(leaving)
    with Traffic(fault_world, calls_per_second=2.0, seed=47) as traffic:
        traffic.wait_for_calls(3)
        # A deploy's restart of one process: it stops cleanly, and (its replacement held back) every page can
        # only reconnect to the other one.
        with paused([supervisor]):
            leaving.terminate()
            wait_for(lambda: not psutil.pid_exists(leaving.pid) or leaving.status() == psutil.STATUS_ZOMBIE, 30,
                     interval=0.1, what="the web process to stop")
            wait_for(lambda: len(consoles.reconnects_ms) >= len(consoles.pages), 30, interval=0.2,
                     what="every page to reconnect")
            assert [c.pid for c in supervisor.children() if c.status() != psutil.STATUS_ZOMBIE] == [staying.pid]
            traffic.wait_for_calls(3)  # these calls' cards reach the pages through the other process only
        web_children(hub.web, but=(leaving.pid,))  # the supervisor replaced it
        traffic.wait_for_calls(2)
    check_every_card(fault_world, traffic, consoles)
    assert all(len(times) >= 2 for times in consoles.snapshot_times())  # each page did move


def test_it_loses_no_card_when_a_web_process_is_killed_under_calls(fault_world, consoles_on):
    hub = fault_world.hub
    doomed, survivor = web_children(hub.web)
    consoles = consoles_on(doomed)
    with Traffic(fault_world, calls_per_second=2.0, seed=53) as traffic:
        traffic.wait_for_calls(4)
        killed_at_ms = time.time() * 1000
        doomed.kill()
        wait_for(lambda: len(consoles.reconnects_ms) >= len(consoles.pages), 30, interval=0.2,
                 what="every page to reconnect")
        replacement = web_children(hub.web, but=(doomed.pid,))
        assert survivor.pid in {child.pid for child in replacement}
        traffic.wait_for_calls(4)
    # Timed by each page: from its socket's close, and from the kill (same host, same clock) to its snapshot.
    reconnects = consoles.reconnects_ms
    from_kill = [times[-1] - killed_at_ms for times in consoles.snapshot_times()]
    assert len(reconnects) == len(consoles.pages), reconnects
    assert max(reconnects) <= RECONNECT_BOUND_MS, reconnects
    assert max(from_kill) <= RECONNECT_BOUND_MS, from_kill
    check_every_card(fault_world, traffic, consoles)
    print(f"pages: {len(consoles.pages)}, reconnect p99 {p99(reconnects):.0f} ms, "
          f"kill to snapshot max {max(from_kill):.0f} ms, processes: {PROCESSES}")
    assert "exited (code -9)" in hub.web.log()


def test_it_moves_every_console_off_a_hung_web_process_within_seconds_and_loses_no_card(fault_world, consoles_on):
    # A web process that hangs rather than dies (SIGSTOP: as a stuck event loop looks from outside) keeps its
    # sockets open, the kernel acknowledging whatever comes. No close tells the page: its keep-alive (a ping
    # the consumer must answer, static/ctihub/console.js) gives the socket up and it reconnects through the
    # shared port to the running process.
    hub = fault_world.hub
    hung, running = web_children(hub.web)
    consoles = consoles_on(hung)
    with Traffic(fault_world, calls_per_second=2.0, seed=59) as traffic:
        traffic.wait_for_calls(4)
        stopped_at_ms = time.time() * 1000
        hung.suspend()
        try:
            wait_for(lambda: all(times[-1] > stopped_at_ms for times in consoles.snapshot_times()), 60,
                     interval=0.2, what="every page's snapshot from the running process")
            back_ms = [times[-1] - stopped_at_ms for times in consoles.snapshot_times()]
            traffic.wait_for_calls(4)  # these calls' cards reach the pages through the running process only
            # Given up on by the page, not closed: nothing else could have told it.
            assert all(lost == {0: "drop"} for lost in consoles.how_lost()), consoles.how_lost()
            assert {c.pid for c in web_children(hub.web)} == {hung.pid, running.pid}  # no exit the supervisor saw
        finally:
            hung.resume()
    # Timed by each page (same host, same clock): from the stop to its snapshot on the running process.
    assert max(back_ms) <= HUNG_BACK_BOUND_MS, back_ms
    check_every_card(fault_world, traffic, consoles)
    # Resumed, the process writes what it held to the sockets the pages gave up on: they ignore it.
    time.sleep(2)
    check_every_card(fault_world, traffic, consoles)
    assert all(view.connected for view in consoles.views)
    print(f"pages: {len(consoles.pages)}, stop to snapshot: {', '.join(f'{ms:.0f}' for ms in sorted(back_ms))} ms; "
          f"after the resume the pages ignored {consoles.ignored()} messages of their old sockets")
