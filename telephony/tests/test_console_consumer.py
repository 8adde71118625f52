"""The console websocket: who may connect, what they see, and what they may do."""

import asyncio
import json
from datetime import timedelta

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts.models import Agent
from ctihub.asgi import application
from telephony import updates as u
from telephony.domain import apply_call_update
from telephony.publish import publish_cards as REAL_PUBLISH_CARDS  # bound before any test patches it
from tests.factories import make_account, make_agent, make_terminal

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1:8000")
HOST = (b"host", b"127.0.0.1:8000")  # the origin must be the connection's own (ctihub/lib/ws_security.py)


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


def headers_for(user=None, origin=ORIGIN) -> list:
    """Built before entering the event loop: logging in is synchronous ORM work."""
    headers = [HOST, origin] if origin else [HOST]
    if user is not None:
        headers.append((b"cookie", session_cookie(user)))
    return headers


def communicator(headers):
    return WebsocketCommunicator(application, "/ws/console/", headers=headers)


async def open_console(comm, timeout: float = 5):
    connected, _ = await comm.connect(timeout=timeout)
    assert connected
    return await comm.receive_json_from(timeout=timeout)


async def receive_type(comm, kind, timeout=5):
    while True:
        message = await comm.receive_json_from(timeout=timeout)
        if message["type"] == kind:
            return message


def ring(account, terminal_pbx_id, call_id, at=0):
    try:
        return _ring(account, terminal_pbx_id, call_id, at)
    finally:
        connection.close()  # it may run in an executor thread whose connection would linger


def _ring(account, terminal_pbx_id, call_id, at=0):
    return apply_call_update(u.CallUpdate(
        account_id=account.pk, pbx_call_id=call_id, state=u.RINGING, kind="callAlerting", payload={},
        occurred_at=timezone.now() + timedelta(seconds=at), terminal_pbx_id=terminal_pbx_id,
        direction=u.INBOUND, remote_number="+33412345670", remote_label="Alice",
    )).call


@pytest.fixture
def layer_in_memory(settings):
    """For consoles refused before they join a group. Left open at the end of asyncio.run, such a
    consumer's channels-redis receive did not end when cancelled, and the suite hung for 120 s
    (twice, right after tests/test_queue_and_layer.py; never alone)."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


async def closed_with(comm):
    connected, _ = await comm.connect()
    assert connected  # accepted, so that the close code reaches the page
    return (await comm.receive_output(timeout=5))["code"]



def resync_each_second(settings, monkeypatch, grace_seconds: float) -> None:
    """Consoles resync every second and leave a card younger than ``grace_seconds`` to its publish."""
    from telephony import consumers

    settings.CONSOLE_RESYNC_SECONDS = 1
    monkeypatch.setattr(consumers, "IN_FLIGHT_GRACE", timedelta(seconds=grace_seconds))


def agent_on(account, pbx_id: str, name: str | None = None):
    """A new agent whose terminal ``pbx_id`` is on ``account``."""
    agent = make_agent(name) if name else make_agent()
    make_terminal(account, pbx_id=pbx_id, agent=agent)
    return agent

def test_it_refuses_an_unauthenticated_connection_with_a_code_the_page_explains(layer_in_memory):
    assert asyncio.run(closed_with(communicator(headers_for()))) == 4401


def test_it_refuses_a_foreign_origin(layer_in_memory):
    user = make_agent().user
    assert asyncio.run(closed_with(communicator(headers_for(user, origin=(b"origin", b"https://evil.example"))))) == 4403
    assert asyncio.run(closed_with(communicator(headers_for(user, origin=None)))) == 4403


def test_it_refuses_a_user_who_is_neither_agent_nor_supervisor(layer_in_memory):
    user = get_user_model().objects.create_user("nobody", password="x-123-456")
    assert asyncio.run(closed_with(communicator(headers_for(user)))) == 4400


def test_it_closes_a_console_whose_snapshot_cannot_be_sent_so_the_page_reconnects(monkeypatch, layer_in_memory):
    from telephony import consumers

    me = make_agent()
    headers = headers_for(me.user)

    async def stuck(self):
        await asyncio.sleep(60)  # group_add on a channel layer that never answers

    monkeypatch.setattr(consumers, "SNAPSHOT_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(consumers.ConsoleConsumer, "_join_and_send_snapshot", stuck)
    assert asyncio.run(closed_with(communicator(headers))) == consumers.CLOSE_TRY_AGAIN


def test_it_closes_a_late_console_with_a_code_daphne_sends_and_the_page_retries():
    """1013 passed the in-process communicator, but daphne refused it and the browser saw 1011."""
    import re

    from daphne.ws_protocol import WebSocketProtocol

    from telephony import consumers
    from tests.support.processes import REPO

    sent = []

    class Recording(WebSocketProtocol):
        def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
            sent.append(code)

    Recording().serverClose(code=consumers.CLOSE_TRY_AGAIN)  # what daphne does with the consumer's close
    assert sent == [consumers.CLOSE_TRY_AGAIN]
    script = (REPO / "static" / "ctihub" / "console.js").read_text()
    explained = re.search(r"const CLOSE_REASONS = \{(.*?)\};", script, re.S).group(1)
    assert f"{consumers.CLOSE_TRY_AGAIN}:" not in explained  # a code it explains, it does not retry


def test_it_closes_a_console_at_once_when_joining_its_group_hangs_past_a_cancel(monkeypatch, layer_in_memory):
    """After a Redis restart a group_add read hung for 20 s, its cancel ignored: the page must not wait on it."""
    import time

    from channels.layers import InMemoryChannelLayer

    from telephony import consumers

    me = make_agent()
    headers = headers_for(me.user)
    hung = []

    async def deaf_group_add(self, group, channel):
        hung.append(group)
        for _ in range(2):  # shrugs off a cancel, as the stuck read did
            try:
                await asyncio.sleep(4)
            except asyncio.CancelledError:
                pass

    monkeypatch.setattr(InMemoryChannelLayer, "group_add", deaf_group_add)

    async def scenario():
        started = time.monotonic()
        code = await closed_with(communicator(headers))
        return code, time.monotonic() - started

    code, took = asyncio.run(scenario())
    assert hung and code == consumers.CLOSE_TRY_AGAIN
    assert took < consumers.JOIN_TIMEOUT_SECONDS + 2, f"closed after {took:.1f}s"


def test_it_sends_a_snapshot_of_my_calls_then_live_updates():
    account = make_account()
    me, other = make_agent(), make_agent()
    make_terminal(account, pbx_id="t-me", agent=me)
    make_terminal(account, pbx_id="t-other", agent=other)
    mine = ring(account, "t-me", "-1")
    ring(account, "t-other", "-2")
    headers = headers_for(me.user)

    async def scenario():
        comm = communicator(headers)
        snapshot = await open_console(comm)
        assert [c["id"] for c in snapshot["calls"]] == [mine.pk]
        assert snapshot["me"]["id"] == me.pk
        await asyncio.get_running_loop().run_in_executor(None, lambda: ring(account, "t-me", "-3"))
        card = (await receive_type(comm, "card"))["card"]
        assert (card["state"], card["remote_number_display"], card["agent"]) == ("ringing", "+33 4 12 34 56 70", me.pk)
        await comm.disconnect()

    asyncio.run(scenario())


def test_it_answers_the_page_s_keep_alive_ping_without_a_database_query(monkeypatch):
    """console.js pings every few seconds and reconnects without the pong: a thousand consoles' pings must
    cost no query, not even the session check every request gets."""
    from telephony import consumers

    account = make_account()
    me = agent_on(account, "t-me")
    headers = headers_for(me.user)
    checks = []
    real_check = consumers.session_user_id
    monkeypatch.setattr(consumers, "session_user_id", lambda key: checks.append(key) or real_check(key))

    async def scenario():
        comm = communicator(headers)
        await open_console(comm)
        for _ in range(3):
            await comm.send_to(text_data=consumers.PING)
            assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
        # Still a console: its calls' cards come after the pongs.
        await asyncio.get_running_loop().run_in_executor(None, lambda: ring(account, "t-me", "-1"))
        assert (await receive_type(comm, "card"))["card"]["state"] == "ringing"
        await comm.disconnect()

    asyncio.run(scenario())
    assert checks == []


def answer(account, terminal_pbx_id, call_id):
    try:
        return apply_call_update(u.CallUpdate(
            account_id=account.pk, pbx_call_id=call_id, state=u.TALKING, kind="callAnswered", payload={},
            occurred_at=timezone.now() + timedelta(seconds=1), terminal_pbx_id=terminal_pbx_id,
            direction=u.INBOUND, remote_number="+33412345670",
        )).call
    finally:
        connection.close()


def test_it_sends_a_card_whose_publish_was_lost_on_the_next_resync_and_only_once(settings, monkeypatch, published):
    """A worker killed between commit and publish: the console learns the call from the database."""
    resync_each_second(settings, monkeypatch, grace_seconds=0.5)
    account = make_account()
    me = agent_on(account, "t-me")
    agent_on(account, "t-other")
    headers = headers_for(me.user)

    async def scenario():
        comm = communicator(headers)
        assert (await open_console(comm))["calls"] == []
        run = asyncio.get_running_loop().run_in_executor
        first = await run(None, lambda: ring(account, "t-me", "-1"))  # its publish lost (`published`)
        await run(None, lambda: ring(account, "t-other", "-2"))  # not mine: never sent to me
        card = (await receive_type(comm, "card", timeout=4))["card"]
        assert (card["id"], card["version"], card["state"]) == (first.pk, 1, "ringing")
        await run(None, lambda: answer(account, "t-me", "-1"))  # a later card of a call the console shows
        card = (await receive_type(comm, "card", timeout=4))["card"]
        assert (card["id"], card["version"], card["state"]) == (first.pk, 2, "talking")
        monkeypatch.setattr("telephony.publish.publish_cards", REAL_PUBLISH_CARDS)
        third = await run(None, lambda: ring(account, "t-me", "-3"))  # published as usual
        assert (await receive_type(comm, "card"))["card"]["id"] == third.pk
        assert await comm.receive_nothing(timeout=3, interval=0.1), "nothing sent twice by the resyncs that follow"
        await comm.disconnect()

    asyncio.run(scenario())
    assert len(published) == 3, "the first three cards were never published"


def test_it_leaves_a_card_younger_than_the_grace_to_its_publish_so_it_never_comes_twice(settings, monkeypatch,
                                                                                          published):
    import time

    resync_each_second(settings, monkeypatch, grace_seconds=2.5)
    account = make_account()
    me = agent_on(account, "t-me")
    headers = headers_for(me.user)

    async def scenario():
        comm = communicator(headers)
        await open_console(comm)
        # Its publish is taken by `published`: to the console, a card still on its way.
        call = await asyncio.get_running_loop().run_in_executor(None, lambda: ring(account, "t-me", "-1"))
        rung = time.monotonic()
        assert await comm.receive_nothing(timeout=2, interval=0.1), "a resync sent a card still in flight"
        card = (await receive_type(comm, "card", timeout=4))["card"]
        assert (card["id"], card["version"]) == (call.pk, 1) and time.monotonic() - rung >= 2.5
        await comm.disconnect()

    asyncio.run(scenario())
    assert published


def test_it_never_sends_a_card_version_twice_when_its_publish_comes_after_the_resync(settings, monkeypatch,
                                                                                     published):
    """A worker seconds behind: the resync sends the card, then its publish arrives."""
    from channels.layers import get_channel_layer

    from telephony.cards import agent_group, call_card

    resync_each_second(settings, monkeypatch, grace_seconds=0.2)
    account = make_account()
    me = agent_on(account, "t-me")
    early = ring(account, "t-me", "-0")  # in the snapshot: its publish comes after it
    early_card = call_card(early)
    connection.close()
    headers = headers_for(me.user)

    async def scenario():
        comm = communicator(headers)
        assert [c["id"] for c in (await open_console(comm))["calls"]] == [early.pk]
        run = asyncio.get_running_loop().run_in_executor
        call = await run(None, lambda: ring(account, "t-me", "-1"))  # its publish held back (`published`)
        card = (await receive_type(comm, "card", timeout=4))["card"]
        assert (card["id"], card["version"]) == (call.pk, 1)  # from the resync
        layer = get_channel_layer()
        late = await run(None, lambda: (call_card(call), connection.close())[0])
        for one in (late, early_card):  # the late publishes
            await layer.group_send(agent_group(me.pk), {"type": "call.card", "card": one})
        assert await comm.receive_nothing(timeout=1.5, interval=0.1), "a card version sent twice"
        newer = dict(late, version=2, state="talking")
        await layer.group_send(agent_group(me.pk), {"type": "call.card", "card": newer})
        assert (await receive_type(comm, "card"))["card"]["version"] == 2  # a newer version still goes
        await comm.disconnect()

    asyncio.run(scenario())


def test_it_sends_each_card_only_to_its_agent_and_to_supervisors():
    account = make_account()
    alice, bob = make_agent("alice"), make_agent("bob")
    boss = make_agent("boss", is_supervisor=True)
    make_terminal(account, pbx_id="t-alice", agent=alice)
    make_terminal(account, pbx_id="t-bob", agent=bob)
    headers = {name: headers_for(agent.user) for name, agent in [("alice", alice), ("bob", bob), ("boss", boss)]}

    async def scenario():
        comms = {name: communicator(h) for name, h in headers.items()}
        for comm in comms.values():
            await open_console(comm)
        await asyncio.get_running_loop().run_in_executor(None, lambda: ring(account, "t-alice", "-10"))
        assert (await receive_type(comms["alice"], "card"))["card"]["agent"] == alice.pk
        assert (await receive_type(comms["boss"], "card"))["card"]["agent"] == alice.pk
        assert await comms["bob"].receive_nothing(timeout=1)
        for comm in comms.values():
            await comm.disconnect()

    asyncio.run(scenario())


def test_it_refuses_a_forged_subscription_and_actions_on_someone_elses_call():
    account = make_account()
    alice, bob = agent_on(account, "t-alice", "alice"), agent_on(account, "t-bob", "bob")
    headers = headers_for(bob.user)

    async def scenario():
        comm = communicator(headers)
        await open_console(comm)
        await comm.send_json_to({"id": 1, "action": "subscribe", "group": f"agent-{alice.pk}"})
        refused = await receive_type(comm, "result")
        assert (refused["ok"], refused["error"]) == (False, "unknown request 'subscribe'")
        alice_call = await asyncio.get_running_loop().run_in_executor(None, lambda: ring(account, "t-alice", "-20"))
        assert await comm.receive_nothing(timeout=1)
        await comm.send_json_to({"id": 2, "action": "call_action", "call": alice_call.pk, "name": "hangup"})
        result = await receive_type(comm, "result")
        assert (result["id"], result["ok"], result["error"]) == (2, False, "this call is not yours")
        await comm.disconnect()

    asyncio.run(scenario())


def test_it_sets_my_status_and_tells_my_other_tabs_and_supervisors():
    me = make_agent()
    boss = make_agent("boss2", is_supervisor=True)
    mine, theirs = headers_for(me.user), headers_for(boss.user)

    async def scenario():
        tab1, tab2, wall = communicator(mine), communicator(mine), communicator(theirs)
        for comm in (tab1, tab2, wall):
            await open_console(comm)
        await tab1.send_json_to({"id": 7, "action": "set_status", "status": "dinner"})
        assert (await receive_type(tab1, "result"))["ok"] is True
        assert (await receive_type(tab2, "agent_status"))["status"] == "dinner"
        assert (await receive_type(wall, "agent_status"))["agent"] == me.pk
        await tab1.send_json_to({"id": 8, "action": "set_status", "status": "asleep"})
        assert (await receive_type(tab1, "result"))["ok"] is False
        for comm in (tab1, tab2, wall):
            await comm.disconnect()

    asyncio.run(scenario())
    assert Agent.objects.get(pk=me.pk).status == "dinner"


def test_it_takes_hundreds_of_consoles_connecting_at_once():
    # redis-py's pool stops at 100 connections by default and channels-redis then crashed
    # every consumer past the 100th (close 1011): a deploy or a Wi-Fi blip reconnects everyone.
    me = make_agent()
    headers = headers_for(me.user)

    async def scenario():
        comms = [communicator(headers) for _ in range(150)]
        # What is asserted is that every one gets its snapshot, not how fast: on a busy 2-core machine
        # 150 handshakes in one process took longer than the communicator's 1 s default (issue 16).
        snapshots = await asyncio.gather(*(open_console(comm, timeout=60) for comm in comms))
        assert {s["type"] for s in snapshots} == {"snapshot"}
        await asyncio.gather(*(comm.disconnect() for comm in comms))

    asyncio.run(scenario())


def test_it_sets_consoles_up_a_few_at_a_time_on_the_web_pool_and_leaves_no_connection_open(settings, monkeypatch):
    """A connect storm: each console's login, viewer and snapshot off asgiref's one thread, its joins a few at once."""
    import threading
    import time

    from channels.layers import get_channel_layer

    from telephony import console

    settings.CONSOLE_SETUP_CONCURRENCY = 2
    me = make_agent()
    headers = headers_for(me.user)
    joining, most, threads = [0], [0], set()
    lock = threading.Lock()
    real_snapshots = console.snapshots

    def snapshots_on_which_thread(viewers):
        with lock:
            threads.add(threading.current_thread().name)
        return real_snapshots(viewers)

    monkeypatch.setattr(console, "snapshots", snapshots_on_which_thread)
    layer = type(get_channel_layer())
    real_group_add = layer.group_add

    async def slow_group_add(self, group, channel):
        joining[0] += 1
        most[0] = max(most[0], joining[0])
        try:
            await asyncio.sleep(0.05)
            return await real_group_add(self, group, channel)
        finally:
            joining[0] -= 1

    monkeypatch.setattr(layer, "group_add", slow_group_add)

    async def scenario():
        comms = [communicator(headers) for _ in range(8)]
        snapshots = await asyncio.gather(*(open_console(comm, timeout=30) for comm in comms))
        assert {s["type"] for s in snapshots} == {"snapshot"}
        await asyncio.gather(*(comm.disconnect() for comm in comms))

    def others_connected() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid()")
            return cursor.fetchone()[0]

    before = others_connected()
    asyncio.run(scenario())
    # Two consoles at a time, each joining its agent's group and its user's side by side.
    assert most[0] == 2 * 2, f"{most[0]} joins at once"
    assert threads and all(name.startswith("ctihub-web") for name in threads), threads
    time.sleep(0.3)
    assert others_connected() <= before  # the pool's threads closed theirs (CONN_MAX_AGE is 0 in the tests)


def test_it_reads_the_snapshots_of_consoles_connecting_together_in_one_go(monkeypatch):
    """1,000 consoles at once read the same few queries 1,000 times over: half of daphne's CPU in a storm."""
    from telephony import console

    account = make_account()
    alice, bob = agent_on(account, "t-alice", "alice"), agent_on(account, "t-bob", "bob")
    boss = make_agent(is_supervisor=True)
    ring(account, "t-alice", "c-alice")
    ring(account, "t-bob", "c-bob")
    people = [alice] * 3 + [bob] * 3 + [boss] * 2
    headers = [headers_for(agent.user) for agent in people]
    reads, viewer_reads = [], []
    real_snapshots, real_viewers = console.snapshots, console.viewers_for

    def counted_snapshots(viewers):
        reads.append(len(viewers))
        return real_snapshots(viewers)

    def counted_viewers(users):
        viewer_reads.append(len(users))
        return real_viewers(users)

    monkeypatch.setattr(console, "snapshots", counted_snapshots)
    monkeypatch.setattr(console, "viewers_for", counted_viewers)

    async def scenario():
        comms = [communicator(h) for h in headers]
        snapshots = await asyncio.gather(*(open_console(comm, timeout=30) for comm in comms))
        await asyncio.gather(*(comm.disconnect() for comm in comms))
        return snapshots

    snapshots = asyncio.run(scenario())
    assert sum(reads) == len(people) and len(reads) < len(people), reads
    assert sum(viewer_reads) == len(people) and len(viewer_reads) < len(people), viewer_reads
    # Each still sees what it would have seen alone: its own calls, or all of them.
    for agent, snapshot in zip(people, snapshots, strict=True):
        alone = console.snapshot(console.viewer_for(agent.user))
        for figures in (snapshot, alone):
            figures.get("wallboard", {}).pop("as_of", None)  # the moment it was read
        assert snapshot == json.loads(json.dumps(alone))
        assert snapshot["me"]["id"] == agent.pk
    assert [c["remote_label"] for c in snapshots[0]["calls"]] == ["Alice"]
    assert len(snapshots[-1]["calls"]) == 2


def test_it_resyncs_every_console_of_a_process_with_one_query_a_period(settings, monkeypatch, published):
    """1,000 consoles asked the database 67 times a second; now the process asks once a period."""
    import time

    from telephony import console

    resync_each_second(settings, monkeypatch, grace_seconds=0.2)
    account = make_account()
    alice, bob = agent_on(account, "t-alice", "alice"), agent_on(account, "t-bob", "bob")
    headers = [headers_for(alice.user), headers_for(alice.user), headers_for(bob.user)]
    looks = []
    real = console.versions_changed

    def counted(*args):
        looks.append(time.monotonic())
        return real(*args)

    monkeypatch.setattr(console, "versions_changed", counted)

    async def scenario():
        comms = [communicator(h) for h in headers]
        for comm in comms:
            await open_console(comm)
        run = asyncio.get_running_loop().run_in_executor
        mine = await run(None, lambda: ring(account, "t-alice", "-1"))  # publishes lost (`published`)
        theirs = await run(None, lambda: ring(account, "t-bob", "-2"))
        got = [(await receive_type(comm, "card", timeout=5))["card"]["id"] for comm in comms]
        assert got == [mine.pk, mine.pk, theirs.pk]
        for comm in comms:
            assert await comm.receive_nothing(timeout=1.5, interval=0.1), "a card sent twice or to another agent"
        await asyncio.gather(*(comm.disconnect() for comm in comms))

    asyncio.run(scenario())
    assert looks and all(b - a > 0.5 for a, b in zip(looks, looks[1:])), "more than one look a period"


def test_it_delivers_cards_without_a_hop_to_the_sync_thread_per_message(monkeypatch):
    """channels closed old connections on asgiref's one sync thread before every message: a thread hop
    per card, for a thread the console's database calls no longer use (they run on the web pool)."""
    import channels.consumer

    hops = []

    async def counted():
        hops.append(1)

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    account = make_account()
    me = agent_on(account, "t-me")
    headers = headers_for(me.user)

    async def scenario():
        comm = communicator(headers)
        await open_console(comm)
        await asyncio.get_running_loop().run_in_executor(None, lambda: ring(account, "t-me", "-1"))
        assert (await receive_type(comm, "card"))["card"]["state"] == "ringing"
        await comm.disconnect()

    asyncio.run(scenario())
    assert hops == []


def test_it_resyncs_each_agent_s_console_from_its_own_cards_only(monkeypatch):
    """Each console went through every card changed in the period: at 1,000 consoles and 300 events/s, 1.5
    million checks a period on daphne's one loop. An agent's console now looks only at its agent's cards; a
    supervisor's at all of them; each gets exactly what it lacks."""
    from types import SimpleNamespace

    from telephony import console, consumers

    now = timezone.now()
    agents = [SimpleNamespace(pk=n, is_supervisor=False) for n in range(1, 41)]
    changed = [({"id": n, "version": 2, "agent": agents[n % 40].pk}, now) for n in range(1, 801)]
    changed.append(({"id": 900, "version": 1, "agent": None}, now))  # a call nobody's
    monkeypatch.setattr(console, "versions_changed", lambda live, since, until: changed)
    monkeypatch.setattr(console, "cards_for", lambda ids, until: {
        call["id"]: dict(call, state="ringing") for call, _at in changed if call["id"] in ids})
    checks = []
    real_may_see = console.Viewer.may_see
    monkeypatch.setattr(console.Viewer, "may_see", lambda viewer, card: checks.append(1) or real_may_see(viewer, card))

    class Console:
        def __init__(self, viewer, has: dict[int, int]):
            self.viewer, self.shown, self.sent = viewer, {}, []
            self.has = has

        def _resync_window(self, until):
            return now - timedelta(minutes=1), dict(self.has), set()

        async def _send_card(self, card):
            self.sent.append(card["id"])

    user = SimpleNamespace(pk=1, is_superuser=False)
    consoles = [Console(console.Viewer(user, agent), {}) for agent in agents]
    consoles[0] = Console(console.Viewer(user, agents[0]), {40: 2})  # has one of its cards already
    boss = Console(console.Viewer(SimpleNamespace(pk=2, is_superuser=True), None), {})
    nobody = Console(console.Viewer(user, None), {})
    resyncs = consumers.Resyncs()
    resyncs.consoles = {*consoles, boss, nobody}

    asyncio.run(resyncs.once())

    for agent, each in zip(agents, consoles):
        expected = [card["id"] for card, _at in changed if card["agent"] == agent.pk and card["id"] not in each.has]
        assert each.sent == expected
    assert len(boss.sent) == len(changed) and nobody.sent == []
    assert len(checks) == 800 + len(changed), "a console looked at another agent's cards"


def test_it_builds_cards_only_for_the_calls_a_console_lacks(monkeypatch):
    """Every changed call's card was built each period (70-100 ms of a web pool thread at 200 events/s, taken
    from daphne's event loop by the GIL); now only the ids and versions are read, and cards built for what
    some console lacks: none when no publish was lost."""
    from types import SimpleNamespace

    from telephony import console, consumers

    now = timezone.now()
    agents = [SimpleNamespace(pk=n, is_supervisor=False) for n in range(1, 4)]
    changed = [({"id": n, "version": 3, "agent": agents[n % 3].pk}, now) for n in range(1, 31)]
    monkeypatch.setattr(console, "versions_changed", lambda live, since, until: changed)
    built = []

    def cards_for(ids, until):
        built.append(set(ids))
        return {call["id"]: dict(call, state="talking") for call, _at in changed if call["id"] in ids}

    monkeypatch.setattr(console, "cards_for", cards_for)

    class Console:
        def __init__(self, viewer, has: dict[int, int]):
            self.viewer, self.has, self.sent = viewer, has, []
            self.shown = {call_id: (version, True, now) for call_id, version in has.items()}

        def _resync_window(self, until):
            return now - timedelta(minutes=1), dict(self.has), set()

        async def _send_card(self, card):
            self.sent.append((card["id"], card["version"]))

    user = SimpleNamespace(pk=1, is_superuser=False)

    def has_all(agent):
        return {call["id"]: 3 for call, _at in changed if call["agent"] == agent.pk}

    consoles = [Console(console.Viewer(user, agent), has_all(agent)) for agent in agents]
    resyncs = consumers.Resyncs()
    resyncs.consoles = set(consoles)
    asyncio.run(resyncs.once())
    assert built == [] and all(each.sent == [] for each in consoles)

    lacking = has_all(agents[0])
    stale = min(lacking)
    lacking[stale] = 2  # this console missed version 3 of one call
    consoles[0] = Console(console.Viewer(user, agents[0]), lacking)
    resyncs.consoles = set(consoles)
    asyncio.run(resyncs.once())
    assert built == [{stale}]
    assert consoles[0].sent == [(stale, 3)] and consoles[1].sent == consoles[2].sent == []


def test_it_lets_the_event_loop_deliver_cards_while_it_resyncs_a_thousand_consoles(monkeypatch):
    """Going through 1,000 consoles in one stretch held daphne's event loop 20-60 ms a period: every card
    arriving meanwhile waited. The loop now gets a turn every RESYNC_CONSOLES_AT_ONCE consoles."""
    from types import SimpleNamespace

    from telephony import console, consumers

    now = timezone.now()
    monkeypatch.setattr(console, "versions_changed", lambda live, since, until: [])

    class Console:
        shown: dict = {}

        def __init__(self, viewer):
            self.viewer = viewer

        def _resync_window(self, until):
            return now - timedelta(minutes=1), {}, set()

    user = SimpleNamespace(pk=1, is_superuser=False)
    resyncs = consumers.Resyncs()
    resyncs.consoles = {Console(console.Viewer(user, SimpleNamespace(pk=n, is_supervisor=False)))
                        for n in range(1000)}
    turns = []

    async def scenario():
        async def other_work():
            while True:
                turns.append(1)
                await asyncio.sleep(0)

        other = asyncio.ensure_future(other_work())
        await asyncio.sleep(0)
        before = len(turns)
        await resyncs.once()
        during = len(turns) - before
        other.cancel()
        return during

    during = asyncio.run(scenario())
    # Two passes over the consoles (their windows, then what each lacks), each giving the loop a turn every
    # RESYNC_CONSOLES_AT_ONCE consoles, and the look itself.
    assert during >= 2 * 1000 // consumers.RESYNC_CONSOLES_AT_ONCE, during


def test_it_sends_a_card_with_the_times_it_passed_each_stage_when_traced(settings):
    """CARD_TRACE (the pop-up benchmark): the card's message carries when it was handed to the publisher,
    taken by its thread, pushed to Redis, fetched by daphne's layer and sent by the console, in that order;
    without it the card comes alone."""
    from ctihub.lib import card_trace
    from telephony.publish import publisher

    account = make_account()
    me = agent_on(account, "t-me")
    headers = headers_for(me.user)

    def ring_traced(call_id):
        try:
            with card_trace.frame_received(__import__("time").monotonic()):
                return _ring(account, "t-me", call_id)
        finally:
            publisher.drain(5)
            connection.close()

    async def scenario():
        comm = communicator(headers)
        await open_console(comm)
        run = asyncio.get_running_loop().run_in_executor
        settings.CARD_TRACE = True
        await run(None, lambda: ring_traced("-1"))
        traced = await receive_type(comm, "card")
        settings.CARD_TRACE = False
        await run(None, lambda: ring_traced("-2"))
        plain = await receive_type(comm, "card")
        await comm.disconnect()
        return traced, plain

    traced, plain = asyncio.run(scenario())
    stages = ["received", "handed", "taken", "pushed", "fetched", "sent"]
    assert set(traced["trace"]) == set(stages), traced["trace"]
    times = [traced["trace"][stage] for stage in stages]
    assert times == sorted(times), traced["trace"]
    assert "trace" not in plain and plain["card"]["state"] == "ringing"


def test_it_tells_the_process_s_console_heap_of_each_console_set_up_and_closed(monkeypatch):
    """So that daphne freezes a settled wave of consoles out of the collector's full walks (ctihub/lib/console_heap.py)."""
    from telephony import consumers

    told = []

    class Heap:
        def set_up(self):
            told.append("set up")

        def closed(self):
            told.append("closed")

    monkeypatch.setattr(consumers, "console_heap", Heap)
    account = make_account()
    headers = headers_for(agent_on(account, "t-me").user)

    async def scenario():
        comm = communicator(headers)
        await open_console(comm)
        await comm.disconnect()

    asyncio.run(scenario())
    assert told == ["set up", "closed"]
