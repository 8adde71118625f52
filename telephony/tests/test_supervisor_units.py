"""The supervisor's reconnect rules and session checks, with fake providers and streams.

test_supervisor.py runs a real Supervisor against the simulator (and is marked e2e as a whole); these
run a ListenerRunner or a SessionChecks alone, with the database left out, so their timings are the
rules' own and a test takes a second or two.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from types import SimpleNamespace

import pytest

from telephony import domain, status
from telephony.providers.base import EventStream, ListenerSpec, ProviderError, SessionExpired, StreamClosed
from telephony.sockets import database, keepalives
from telephony.sockets import runner as runners

SOON = 0.1  # "at once", give or take a busy machine


class FakeStream(EventStream):
    """A socket up for ``up_for`` seconds (None: until interrupted), after which the PBX closes it."""

    def __init__(self, up_for: float | None = None, session_check=None):
        self.up_for = up_for
        self.session_check = session_check
        self.opened = time.monotonic()
        self.closed_at: float | None = None
        self.reason: str | None = None
        self._interrupted = threading.Event()

    def recv(self, timeout: float) -> str | None:
        now = time.monotonic()
        until = now + timeout if self.up_for is None else min(now + timeout, self.opened + self.up_for)
        if self._interrupted.wait(max(until - now, 0)):
            self._close()
            raise StreamClosed(self.reason)
        if self.up_for is not None and time.monotonic() >= self.opened + self.up_for:
            self._close()
            raise StreamClosed("closed by the PBX")
        return None

    def _close(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()

    def keepalive(self) -> None:
        pass

    def interrupt(self, reason: str) -> None:
        self.reason = self.reason or reason
        self._interrupted.set()

    def close(self) -> None:
        pass


class FakeProvider:
    """Opens the scripted sockets in turn: a number is how long one stays up, an exception a failed login."""

    def __init__(self, *script, session_check=None):
        self.script = deque(script)
        self.session_check = session_check
        self.opens: list[float] = []
        self.streams: list[FakeStream] = []

    def open_stream(self, spec):
        self.opens.append(time.monotonic())
        step = self.script.popleft() if self.script else None
        if isinstance(step, Exception):
            raise step
        stream = FakeStream(step, self.session_check)
        self.streams.append(stream)
        return stream

    def parse_frame(self, text, spec):
        return []

    def close_stream(self, spec, stream, *, keep_listener=False):
        pass

    def close(self):
        pass


class Registry:
    def add(self, stream, **kwargs):
        pass

    def remove(self, stream):
        pass


class FakeSupervisor:
    owner = "test-supervisor"

    def __init__(self, backoff_cap_seconds: float = 60.0, session_checks=None):
        self.backoff_cap_seconds = backoff_cap_seconds
        self.keepalives = Registry()
        self.session_checks = session_checks or Registry()

    def restart_generation(self, account_id: int) -> int:
        return 0

    @contextlib.contextmanager
    def connect_slot(self, stop_event, handover=False):
        yield True


@pytest.fixture
def no_database(monkeypatch, inline_db):
    """The runner's database writes, recorded instead of made."""
    states: list[str] = []
    monkeypatch.setattr(status, "set_listener_state", lambda listener_id, state, **kwargs: states.append(state))
    monkeypatch.setattr(status, "set_account_status", lambda *args, **kwargs: None)
    monkeypatch.setattr(runners, "connected_notes", lambda: SimpleNamespace(add=lambda item: states.append("connected")))
    monkeypatch.setattr(status, "count_reconnect", lambda listener_id: None)
    monkeypatch.setattr(status, "touch_listener", lambda *args: None)
    monkeypatch.setattr(domain, "apply_call_updates", lambda updates, received=None: [])
    return states


@pytest.fixture
def fast_rules(monkeypatch):
    # raising=False: the test must also run (and fail) on code without HEALTHY_SECONDS.
    monkeypatch.setattr(runners, "HEALTHY_SECONDS", 0.2, raising=False)
    monkeypatch.setattr(runners, "BACKOFF_BASE_SECONDS", 0.05)


def jitter(monkeypatch, pick):
    """Make the jitter deterministic: ``pick(low, high)``."""
    monkeypatch.setattr(runners.random, "uniform", pick)


def run_runner(monkeypatch, provider: FakeProvider, opens: int, owner: FakeSupervisor | None = None,
               timeout: float = 20) -> runners.ListenerRunner:
    """Run a runner on ``provider`` until it has opened ``opens`` sockets, then stop it."""
    monkeypatch.setattr(runners, "provider_for", lambda account, http=None: provider)
    runner = runners.ListenerRunner(owner or FakeSupervisor(), SimpleNamespace(pk=1, kind="fake", ca_bundle=""), SimpleNamespace(pk=7),
                            ListenerSpec(name="fake"))
    runner.start()
    deadline = time.monotonic() + timeout
    try:
        while len(provider.opens) < opens and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        runner.stop()
        runner.join(5)
    assert not runner.is_alive()
    assert len(provider.opens) >= opens, f"only {len(provider.opens)} sockets opened in {timeout} s"
    return runner


# --- backoff_delay -----------------------------------------------------------------------------------

def test_it_bounds_the_delay_by_a_quarter_of_the_time_down_between_the_base_and_the_cap():
    for _ in range(200):
        assert 0.25 <= runners.backoff_delay(0) <= 0.5  # the base, jittered in its upper half
        assert 1.25 <= runners.backoff_delay(10) <= 2.5  # back within a quarter of a 10 s outage
        assert 30 <= runners.backoff_delay(600, cap=60) <= 60
        assert 2.5 <= runners.backoff_delay(600, cap=5) <= 5
    assert len({round(runners.backoff_delay(10), 6) for _ in range(20)}) > 1, "jittered"


# --- reconnects ------------------------------------------------------------------------------------

def test_it_reconnects_at_once_each_time_a_healthy_socket_closes_after_an_outage(monkeypatch, no_database, fast_rules):
    """Today's rule: after one outage every later drop waited its backoff, and calls in that window were lost."""
    jitter(monkeypatch, lambda low, high: high)
    outage = ProviderError("HTTP 503", status=503)
    provider = FakeProvider(outage, outage, 0.4, 0.4, None)  # two failed logins, then two healthy sockets closed
    run_runner(monkeypatch, provider, opens=5)

    first, second = provider.streams[0], provider.streams[1]
    assert provider.opens[3] - first.closed_at < SOON, "the first healthy socket waited to reconnect"
    assert provider.opens[4] - second.closed_at < SOON, "the second healthy socket waited to reconnect"


def test_it_backs_off_longer_for_each_failure_in_a_row_up_to_the_cap(monkeypatch, no_database, fast_rules):
    jitter(monkeypatch, lambda low, high: high)
    chosen: list[tuple[float, float]] = []
    real = runners.backoff_delay

    def recorded(seconds_down, **kwargs):
        delay = real(seconds_down, **kwargs)
        chosen.append((seconds_down, delay))
        return delay

    monkeypatch.setattr(runners, "backoff_delay", recorded)
    failures = [ProviderError("HTTP 503", status=503)] * 14
    provider = FakeProvider(0.3, *failures, None)
    run_runner(monkeypatch, provider, opens=16, owner=FakeSupervisor(backoff_cap_seconds=0.3))

    assert provider.opens[1] - provider.streams[0].closed_at < SOON, "the healthy socket's loss: at once"
    delays = [delay for _, delay in chosen]
    assert len(delays) == 14, "one wait after each failed try, none after the healthy socket"
    assert [down for down, _ in chosen] == sorted(down for down, _ in chosen)
    assert delays == sorted(delays), "the delay grows over failures in a row"
    assert delays[0] == pytest.approx(0.05) and delays[-1] == pytest.approx(0.3), delays
    tries = provider.opens[1:]
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert all(gap >= delay - 0.01 for gap, delay in zip(gaps, delays)), (gaps, delays)


def test_it_does_not_reconnect_at_once_forever_to_a_pbx_that_closes_each_socket_it_accepts(
        monkeypatch, no_database, fast_rules):
    jitter(monkeypatch, lambda low, high: low)  # the shortest waits the rules allow
    provider = FakeProvider(0.4, *[0.0] * 6, None)
    run_runner(monkeypatch, provider, opens=8)

    waits = [opened - stream.closed_at for opened, stream in zip(provider.opens[1:], provider.streams)]
    assert waits[0] < SOON, "the healthy socket's loss: at once"
    assert all(wait >= 0.025 for wait in waits[1:]), f"a socket closed at once reconnected at once: {waits}"


def test_it_reconnects_at_once_when_a_session_check_finds_the_session_expired(monkeypatch, no_database, fast_rules):
    """Even a socket up for less than HEALTHY_SECONDS: the PBX said why it is useless, and it is no hot loop."""
    monkeypatch.setattr(runners, "HEALTHY_SECONDS", 60)
    jitter(monkeypatch, lambda low, high: high)
    checks = keepalives.SessionChecks(0.2)
    checks.start()
    expired = SessionExpired("Istra myCrm session expired during GET v1/crm/GetTerminals", status=401)
    verdicts = deque([expired])

    def session_check():
        if verdicts:
            raise verdicts.popleft()

    provider = FakeProvider(None, None, session_check=session_check)
    try:
        run_runner(monkeypatch, provider, opens=2, owner=FakeSupervisor(session_checks=checks))
    finally:
        checks.stop()
    first = provider.streams[0]
    assert "session expired at the PBX" in first.reason
    assert provider.opens[1] - first.closed_at < SOON


# --- session checks --------------------------------------------------------------------------------

INTERVAL = 0.2


@pytest.fixture
def checks():
    running = keepalives.SessionChecks(INTERVAL, threads=3, per_group=2)
    running.start()
    yield running
    running.stop()
    running.join(2)


class Checked:
    """A stream's session check: records when it ran, then does what it is told."""

    def __init__(self, then=None, hold: threading.Event | None = None):
        self.times: list[float] = []
        self.then = then
        self.hold = hold
        self.stream = FakeStream(session_check=self)

    def __call__(self):
        self.times.append(time.monotonic())
        if self.hold is not None:
            self.hold.wait(10)
        if self.then is not None:
            raise self.then


def test_it_checks_each_session_one_interval_after_it_was_added_and_every_interval_after(checks):
    check = Checked()
    added = time.monotonic()
    checks.add(check.stream)
    time.sleep(4.5 * INTERVAL)
    assert 3 <= len(check.times) <= 4, check.times
    assert check.times[0] - added >= INTERVAL - 0.01
    gaps = [b - a for a, b in zip(check.times, check.times[1:])]
    assert all(0.5 * INTERVAL <= gap <= 1.5 * INTERVAL for gap in gaps), gaps
    assert check.stream.reason is None


def test_it_interrupts_a_stream_whose_session_expired_and_checks_it_no_more(checks, caplog):
    check = Checked(then=SessionExpired("Istra myCrm session expired during GET v1/crm/GetTerminals", status=401))
    told: list[str] = []
    checks.add(check.stream, expired=lambda reason: (told.append(reason), check.stream.interrupt(reason)),
               log_extra={"account_id": 3, "listener_id": 9})
    time.sleep(4 * INTERVAL)
    assert len(check.times) == 1
    assert told == [check.stream.reason] and "session expired at the PBX" in told[0]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "session expired at the PBX; logging in again" in warning.getMessage()
    assert (warning.account_id, warning.listener_id) == (3, 9)


def test_it_interrupts_the_stream_itself_when_no_one_asked_to_be_told(checks):
    check = Checked(then=SessionExpired("cookie mismatch", status=403, code="ROUTER_ERR_400"))
    checks.add(check.stream)
    time.sleep(2 * INTERVAL)
    assert check.stream._interrupted.is_set() and "session expired at the PBX" in check.stream.reason


def test_it_leaves_the_stream_alone_when_a_check_fails_for_another_reason(checks, caplog):
    caplog.set_level(logging.INFO, logger="telephony.sockets.keepalives")
    check = Checked(then=ProviderError("Istra myCrm failed GET v1/crm/GetTerminals: HTTP 503", status=503))
    checks.add(check.stream)
    time.sleep(3.5 * INTERVAL)
    assert len(check.times) == 3, "checked on, every interval"
    assert check.stream.reason is None
    assert any("session check failed" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_it_checks_other_streams_on_time_while_one_check_waits_on_a_slow_pbx(checks):
    release = threading.Event()
    slow, other = Checked(hold=release), Checked()
    checks.add(slow.stream)
    checks.add(other.stream)
    try:
        time.sleep(5.5 * INTERVAL)
        assert len(slow.times) == 1, "one check at a time per stream"
        assert len(other.times) >= 4, other.times
    finally:
        release.set()


def test_it_keeps_one_slow_account_to_its_share_of_the_threads(checks):
    release = threading.Event()
    slow = [Checked(hold=release) for _ in range(4)]
    other = Checked()
    for check in slow:
        checks.add(check.stream, group="slow account")
    checks.add(other.stream, group="other account")
    try:
        time.sleep(3.5 * INTERVAL)
        assert sum(len(check.times) for check in slow) == 2, "two of the three threads at most"
        assert len(other.times) >= 2, other.times
    finally:
        release.set()
    time.sleep(INTERVAL)
    assert all(check.times for check in slow), "the waiting checks ran once the account had a thread again"


def test_it_never_checks_a_removed_stream_nor_one_without_a_session_check(checks):
    removed = Checked()
    checks.add(removed.stream)
    checks.remove(removed.stream)
    without = FakeStream()
    checks.add(without)
    time.sleep(2.5 * INTERVAL)
    assert removed.times == []
    assert without not in checks._live


# --- database threads ------------------------------------------------------------------------------

def test_it_gives_work_to_the_database_thread_idle_the_shortest_time(monkeypatch):
    """Handed round every thread in turn, a frame every tenth of a second found each thread's connection
    closed after its quiet second: nearly every frame paid a new PostgreSQL connection."""
    closed = []
    monkeypatch.setattr(database, "DB_IDLE_SECONDS", 0.3)
    monkeypatch.setattr(database.connection, "close", lambda: closed.append(threading.current_thread().name))
    workers = database.DbWorkers(4)
    time.sleep(0.6)  # every thread has been quiet once
    closed.clear()
    names = set()
    for _ in range(12):  # slower than one frame per thread per idle period if handed round
        names.add(workers.run(lambda: threading.current_thread().name))
        time.sleep(0.1)
    assert len(names) == 1
    assert workers.run(lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        workers.run(lambda: 1 / 0)


def test_it_queues_work_while_every_database_thread_is_busy_and_runs_all_of_it():
    workers = database.DbWorkers(2)
    release = threading.Event()
    results = []
    threads = [threading.Thread(target=lambda n=n: results.append(workers.run(
        lambda: release.wait(5) and n))) for n in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    assert results == []  # two running, four waiting
    release.set()
    for thread in threads:
        thread.join(5)
    assert sorted(results) == [0, 1, 2, 3, 4, 5]


# --- retire (a listener handed over to another worker) ---------------------------------------------------

class QueuedStream(FakeStream):
    """Frames the test puts in its buffer, read in order; ``pending`` while any is left."""

    def __init__(self):
        super().__init__(None)
        self.frames: deque[str] = deque()
        self.arrived = threading.Event()

    def push(self, *texts: str) -> None:
        self.frames.extend(texts)
        self.arrived.set()

    def recv(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while not self.frames:
            if self._interrupted.is_set():
                raise StreamClosed(self.reason)
            if time.monotonic() >= deadline:
                return None
            self.arrived.wait(0.01)
            self.arrived.clear()
        if self._interrupted.is_set():  # an interrupt drops what the buffer still holds, as a socket's would
            raise StreamClosed(self.reason)
        return self.frames.popleft()

    def pending(self) -> bool:
        return bool(self.frames)


@pytest.mark.parametrize("how", ["retire", "stop"])
def test_it_stores_the_frames_already_on_a_handed_over_socket_before_closing_it(monkeypatch, no_database, how):
    stream, stored, slow = QueuedStream(), [], threading.Event()
    provider = FakeProvider()
    provider.open_stream = lambda spec: stream
    provider.parse_frame = lambda text, spec: [text]

    def apply(updates, received=None):
        if updates[0] == "first":
            slow.set()
            time.sleep(0.5)  # a slow burst: the PBX sends more meanwhile, before the new owner connected
        stored.extend(updates)

    monkeypatch.setattr(domain, "apply_call_updates", apply)
    monkeypatch.setattr(runners, "provider_for", lambda account, http=None: provider)
    runner = runners.ListenerRunner(FakeSupervisor(), SimpleNamespace(pk=1, kind="fake", ca_bundle=""), SimpleNamespace(pk=7),
                                    ListenerSpec(name="fake"))
    runner.start()
    try:
        stream.push("first")
        assert slow.wait(5)
        stream.push("second", "third")
        getattr(runner, how)()
        runner.join(5)
        assert not runner.is_alive()
    finally:
        runner.stop()
    if how == "retire":
        assert stored == ["first", "second", "third"]
    else:  # what a plain stop loses: why a handover retires the old owner's runner
        assert stored == ["first"]


def test_it_opens_every_socket_of_an_account_over_the_process_s_one_client_for_it(monkeypatch, no_database):
    # A client (and a TCP connection) built for each socket was a quarter of a handover's CPU (issue 19).
    given = []

    def provider_for(account, http=None):
        given.append(http)
        return FakeProvider(10)

    monkeypatch.setattr(runners, "provider_for", provider_for)
    account = SimpleNamespace(pk=1, kind="fake", ca_bundle="")
    started = [runners.ListenerRunner(FakeSupervisor(), account, SimpleNamespace(pk=n), ListenerSpec(name=f"l{n}"))
               for n in (7, 8)]
    for runner in started:
        runner.start()
    try:
        deadline = time.monotonic() + 5
        while len(given) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        for runner in started:
            runner.stop()
            runner.join(5)
    assert len(given) == 2 and given[0] is given[1] is not None
    assert given[0].name == "fake.sockets"


def test_it_logs_in_with_the_provider_s_database_reads_on_the_database_threads(monkeypatch, no_database):
    # A runner thread keeps no connection: a read of its own opened one each login (issue 19).
    from telephony.providers.base import run_database

    class RecordingDb:
        inside = False

        def run(self, operation):
            RecordingDb.inside = True
            try:
                return operation()
            finally:
                RecordingDb.inside = False

    monkeypatch.setattr(runners, "db_workers", RecordingDb)
    reads = []

    class ReadingProvider(FakeProvider):
        def open_stream(self, spec):
            reads.append(run_database(lambda: RecordingDb.inside))
            return super().open_stream(spec)

    run_runner(monkeypatch, ReadingProvider(10), opens=1)
    assert reads == [True]
    assert run_database(lambda: RecordingDb.inside) is False  # elsewhere: in the calling thread
