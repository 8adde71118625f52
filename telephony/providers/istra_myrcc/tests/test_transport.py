"""MyRccProvider against the real simulator: directory, snapshots, and the ten call-line actions."""

from __future__ import annotations

import base64
import json
import time

import pytest

from telephony import updates as u
from telephony.models import Call, PbxAccount
from telephony.providers import provider_for
from telephony.providers.base import ActionRefused, ProviderError, SessionExpired
from telephony.providers.istra_myrcc import transport
from telephony.providers.istra_myrcc.frames import parse_myrcc_frame
from telephony.providers.istra_myrcc.transport import MyRccProvider
from tests.factories import make_account, make_terminal

pytestmark = pytest.mark.django_db

ALICE = "5985841581756135023"  # above 2**53, so it must stay a string
BOB = "897778778"


@pytest.fixture
def world(sim):
    world = sim.state.istra
    world.add_user("rccadmin", "secret", enterprise="e1")
    world.add_extension(ALICE, "101", label="Alice White", department="HR", photo="http://alice.pictures.com",
                        pstn_numbers=["+33415369101"])
    world.add_extension(BOB, "102", label="Bob Doe", department="Sales")
    for n in range(5):
        world.add_extension(f"90000000000000000{n}", f"20{n}", label=f"Desk {n}")
    world.add_extension("123", "301", enterprise="e2", label="Elsewhere")
    world.add_extension("124", "302", label="Not for RCC", myrcc=False)
    return world


@pytest.fixture
def account(sim, world):
    return make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=sim.istra_base, login="rccadmin",
                        password="secret", enterprise="e1")


@pytest.fixture
def provider(account):
    provider = provider_for(account)
    yield provider
    provider.close()


def received(world, since: int = 0) -> list[tuple[str, str, int]]:
    """(method, path under /restletrouter/, status) of what the simulator received."""
    return [(e["method"], e["path"].removeprefix("/restletrouter/"), e["status"])
            for e in world.requests_received(since)]


def last_seq(world) -> int:
    entries = world.requests_received()
    return entries[-1]["seq"] if entries else 0


def call_now(provider, line_id: str) -> Call:
    """The call as the hub would hold it after the line's latest snapshot (not saved)."""
    answer = provider.session.request("GET", "v1/rcc/CallLine")
    (update,) = [x for x in parse_myrcc_frame(answer.text, provider.account.pk) if x.pbx_call_id == line_id]
    return Call(account=provider.account, pbx_call_id=line_id, state=update.state,
                allowed_actions=list(update.allowed_actions))


def talking_call(world, extension: str = ALICE, caller: str = "0612345678") -> str:
    line = world.incoming_call(extension, caller)
    world.answer(line.line_id)
    return line.line_id


def read_until(provider, spec, stream, done, timeout: float = 5.0) -> list:
    updates = []
    deadline = time.monotonic() + timeout
    while not done(updates) and time.monotonic() < deadline:
        text = stream.recv(0.2)
        if text is not None:
            updates.extend(provider.parse_frame(text, spec))
    return updates


def test_it_is_the_registered_myrcc_provider(provider):
    assert isinstance(provider, MyRccProvider)
    assert provider.holds_sockets


def test_it_tests_the_connection_as_an_rcc_admin_of_the_enterprise(provider, world):
    assert provider.test_connection() == "7 extensions in e1"
    login = world.requests_received()[0]
    authorization = {k.lower(): v for k, v in login["headers"].items()}["authorization"]
    assert (login["path"], base64.b64decode(authorization.split()[1])) == (
        "/restletrouter/v1/service/Login", b"rccadmin|e1:secret")


def test_it_refuses_permanently_a_login_for_another_enterprise(sim, world):
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=sim.istra_base, login="rccadmin",
                           password="secret", enterprise="e2")
    with pytest.raises(ProviderError, match="login, password and enterprise") as refused:
        provider_for(account).test_connection()
    assert refused.value.permanent


def test_it_follows_next_through_every_page_of_the_directory(provider, world, monkeypatch):
    monkeypatch.setattr(transport, "PAGE_LENGTH", 3)
    terminals = provider.fetch_terminals()
    assert len(terminals) == 7
    pages = [e["query"] for e in world.requests_received() if e["path"].endswith("/v1/rcc/Extension")]
    assert pages == [{"offset": "0", "length": "3"}, {"offset": "3", "length": "3"}, {"offset": "6", "length": "3"}]
    alice = terminals[0]
    assert (alice.pbx_id, alice.extension, alice.label, alice.department, alice.photo_url, alice.pstn_numbers) == (
        ALICE, "101", "Alice White", "HR", "http://alice.pictures.com", ("+33415369101",))


def test_it_places_a_call_and_answers_the_new_line(provider, world):
    line = provider.place_call(BOB, "0612345678")
    assert (line["state"], line["extensionURI"]) == ("prompting", f"v1/rcc/Extension/{BOB}")
    (request,) = [e for e in world.requests_received() if e["path"].endswith("/placeCall")]
    assert (request["method"], request["path"]) == ("POST", f"/restletrouter/v1/rcc/Extension/{BOB}/placeCall")
    assert json.loads(request["body"]) == {"destination": "0612345678"}


def test_it_places_a_call_through_a_redirect_to_another_host(provider, world, sim):
    other_host = sim.url.replace("127.0.0.1", "localhost")
    world.redirect_next(1, status=302, base_url=other_host, path="placeCall")
    assert provider.place_call(BOB, "555")["state"] == "prompting"
    moved, placed = [e for e in world.requests_received() if e["path"].endswith("/placeCall")]
    assert (moved["status"], placed["status"]) == (302, 200)
    assert placed["method"] == "POST" and placed["body"] == moved["body"]
    assert {k.lower(): v for k, v in placed["headers"].items()}["host"].startswith("localhost")


def test_it_reports_placing_a_call_from_an_unknown_extension_as_permanent(provider):
    with pytest.raises(ProviderError) as refused:
        provider.place_call("999", "555")
    assert (refused.value.permanent, refused.value.code) == (True, "ERR_0")


def test_it_hands_the_current_lines_to_the_supervisor_then_streams_snapshots(provider, world):
    existing = talking_call(world, BOB)
    (spec,) = provider.listener_specs([ALICE, BOB])
    assert spec.name == "CallLines" and spec.terminal_pbx_id is None
    stream = provider.open_stream(spec)
    try:
        assert [(e["method"], e["path"].removeprefix("/restletrouter/"), e["body"] or e["query"])
                for e in world.requests_received()] == [
            ("POST", "v1/service/Login", {}),
            ("GET", "ws-service/myRCC", {}),
            ("POST", "v1/service/EventListener/bean", '{"name": "CallLines"}'),
            ("GET", "v1/rcc/CallLine", {"listenerName": "CallLines"}),
        ]
        (initial,) = [x for text in stream.initial_frames for x in provider.parse_frame(text, spec)]
        assert (initial.pbx_call_id, initial.state, initial.terminal_pbx_id) == (existing, u.TALKING, BOB)

        placed = provider.place_call(ALICE, "0699999999")
        world.answer(placed["lineId"])  # Alice's phone picks up: the destination rings
        world.answer(placed["lineId"])  # the destination answers
        updates = read_until(provider, spec, stream, lambda xs: any(x.state == u.TALKING for x in xs))
    finally:
        provider.close_stream(spec, stream)

    mine = [x for x in updates if x.pbx_call_id == placed["lineId"]]
    assert mine[-1].state == u.TALKING  # intermediate snapshots may be coalesced away
    assert all(x.direction == u.OUTBOUND and x.terminal_pbx_id == ALICE for x in mine)
    assert mine[-1].answered_at is not None and mine[-1].frame_id


def test_it_marks_a_call_between_two_extensions_internal_and_a_customers_call_not(provider, world):
    # A myRCC line has no type: the doc's colleague calls show the other extension's short number. Before, every
    # colleague call reached retailCRM as a customer's (a pop-up, a history row) and counted on the wallboard.
    make_terminal(provider.account, pbx_id=ALICE, extension="101")
    make_terminal(provider.account, pbx_id=BOB, extension="102")
    (spec,) = provider.listener_specs([ALICE, BOB])
    stream = provider.open_stream(spec)
    try:
        list(stream.initial_frames)  # read at connect, as the supervisor does: the directory comes with them
        placed = provider.place_call(ALICE, "102")["lineId"]
        world.answer(placed)  # Alice's phone picks up: Bob's rings
        customer = world.incoming_call(BOB, "0612345678").line_id
        updates = read_until(provider, spec, stream,
                             lambda xs: {x.terminal_pbx_id for x in xs if x.pbx_call_id != customer} == {ALICE, BOB}
                             and any(x.pbx_call_id == customer for x in xs))
    finally:
        provider.close_stream(spec, stream)

    by_line = {}
    for update in updates:
        by_line.setdefault(update.pbx_call_id, set()).add((update.terminal_pbx_id, update.remote_number,
                                                           update.is_internal))
    assert by_line.pop(customer) == {(BOB, "0612345678", False)}
    assert set().union(*by_line.values()) == {(ALICE, "102", True), (BOB, "101", True)}


def test_it_says_nothing_of_internal_before_the_directory_is_synced(provider, world):
    (spec,) = provider.listener_specs([ALICE, BOB])
    stream = provider.open_stream(spec)
    try:
        list(stream.initial_frames)
        placed = provider.place_call(ALICE, "102")["lineId"]
        updates = read_until(provider, spec, stream, lambda xs: any(x.pbx_call_id == placed for x in xs))
    finally:
        provider.close_stream(spec, stream)
    assert {x.is_internal for x in updates} == {None}


def test_it_gives_a_call_the_actions_a_second_line_brings_though_its_snapshot_time_stays(provider, world):
    # The simulator pushes a line again when a sibling appears on its extension, with its new actions (transfer,
    # merge) and its lastModificationTime unchanged. Taken for a duplicate, the first call's card kept no
    # transfer or merge button.
    from telephony.domain import apply_call_updates

    make_terminal(provider.account, pbx_id=ALICE, extension="101")
    (spec,) = provider.listener_specs([ALICE])
    stream = provider.open_stream(spec)
    try:
        list(stream.initial_frames)
        first = talking_call(world)
        apply_call_updates(read_until(provider, spec, stream, lambda xs: any(
            x.pbx_call_id == first and x.state == u.TALKING for x in xs)))
        before = Call.objects.get(pbx_call_id=first)
        second = world.incoming_call(ALICE, "0622222222").line_id
        updates = read_until(provider, spec, stream, lambda xs: any(x.pbx_call_id == first for x in xs)
                             and any(x.pbx_call_id == second for x in xs))
        apply_call_updates(updates)
    finally:
        provider.close_stream(spec, stream)
    again = [x for x in updates if x.pbx_call_id == first]
    assert {x.payload["lastModificationTime"] for x in again} == {before.events.latest("id").payload[
        "lastModificationTime"]}  # the same snapshot time as before
    after = Call.objects.get(pbx_call_id=first)
    assert (after.state, after.version) == ("talking", before.version + 1)
    assert set(after.allowed_actions) - set(before.allowed_actions)  # what the second line made possible


def ringing_call(world) -> str:
    return world.incoming_call(ALICE, "0612345678").line_id


def held_call(world) -> str:
    line_id = talking_call(world)
    world.hold(line_id)
    return line_id


def two_calls(world) -> tuple[str, str]:
    """A talking call and, on the same extension, a held one it can be merged or transferred with."""
    held = held_call(world)
    return talking_call(world, caller="0622222222"), held


ACTION_CASES = [
    # action, how to get a line where it is allowed, payload, myRCC action, JSON body the doc asks for
    (u.ANSWER, ringing_call, {}, "answer", ""),
    (u.HOLD, talking_call, {}, "hold", ""),
    (u.RESUME, held_call, {}, "unhold", ""),
    (u.HANGUP, talking_call, {}, "disconnect", ""),
    (u.LEAVE, talking_call, {}, "leave", ""),
    (u.REDIRECT, talking_call, {"destination": "0633333333"}, "redirect", {"destination": "0633333333"}),
    (u.SEND_DTMF, talking_call, {"digits": "12#"}, "sendDtmfs", {"dtmfs": "12#"}),
    (u.ADD_PARTY, talking_call, {"destination": "0644444444"}, "addParty", {"destination": "0644444444"}),
    (u.MERGE, two_calls, "the held call", "merge", "its line URI"),
    (u.TRANSFER, two_calls, "the held call", "transfer", "its line URI"),
]


@pytest.mark.parametrize(("action", "prepare", "payload", "rcc_action", "body"), ACTION_CASES,
                         ids=[case[0] for case in ACTION_CASES])
def test_it_sends_each_action_as_the_doc_shapes_it(provider, world, action, prepare, payload, rcc_action, body):
    prepared = prepare(world)
    line_id, other_line = prepared if isinstance(prepared, tuple) else (prepared, None)
    call = call_now(provider, line_id)
    if other_line is not None:
        payload = {"other_call": call_now(provider, other_line)}
        body = {"line": f"v1/rcc/CallLine/{other_line}"}
    seq = last_seq(world)
    assert provider.call_action(call, action, payload) == {}
    (request,) = world.requests_received(seq)
    assert (request["method"], request["path"], request["status"]) == (
        "POST", f"/restletrouter/v1/rcc/CallLine/{line_id}/{rcc_action}", 204)
    assert (json.loads(request["body"]) if request["body"] else "") == body


def test_it_refuses_an_action_the_line_does_not_allow_before_any_request(provider, world):
    call = Call(account=provider.account, pbx_call_id="-401", state=Call.State.RINGING,
                allowed_actions=[u.ANSWER, u.HANGUP])
    with pytest.raises(ActionRefused, match="answer, hangup"):
        provider.call_action(call, u.HOLD, {})
    assert world.requests_received() == []


def test_it_refuses_a_redirect_without_a_destination_before_any_request(provider, world):
    call = Call(account=provider.account, pbx_call_id="-401", state=Call.State.TALKING, allowed_actions=[u.REDIRECT])
    with pytest.raises(ActionRefused, match="destination"):
        provider.call_action(call, u.REDIRECT, {"destination": "  "})
    assert world.requests_received() == []


def test_it_renews_an_expired_session_without_failing_the_action(provider, world):
    line_id = talking_call(world)
    call = call_now(provider, line_id)
    world.expire_sessions()
    seq = last_seq(world)
    provider.call_action(call, u.HOLD, {})
    assert received(world, seq) == [
        ("POST", f"v1/rcc/CallLine/{line_id}/hold", 401),
        ("POST", "v1/service/Login", 200),
        ("POST", f"v1/rcc/CallLine/{line_id}/hold", 204),
    ]
    assert world.call(line_id).state == "held"


def test_it_logs_out_on_close(provider, world):
    provider.fetch_terminals()
    provider.close()
    assert received(world)[-1] == ("POST", "v1/service/Logout", 204)
    assert world.sessions.of_app("myRCC") == []


def test_it_gives_the_stream_a_session_check_that_reads_one_extension_on_the_sockets_session(provider, world):
    (spec,) = provider.listener_specs([])
    stream = provider.open_stream(spec)
    list(stream.initial_frames)
    try:
        (session,) = world.sessions.of_app("myRCC")
        session.last_seen -= 100  # as if idle for long: only a request on this session brings it back
        seq = last_seq(world)
        stream.session_check()
        assert received(world, seq) == [("GET", "v1/rcc/Extension", 200)]
        [check] = world.requests_received(seq)
        assert check["query"] == {"offset": "0", "length": "1"}
        assert f"myRCC_SESSIONID={session.id}" in check["headers"]["Cookie"]
        assert time.monotonic() - session.last_seen < 5
    finally:
        provider.close_stream(spec, stream)


def test_its_session_check_says_the_session_expired_and_does_not_log_in_again(provider, world):
    (spec,) = provider.listener_specs([])
    stream = provider.open_stream(spec)
    list(stream.initial_frames)
    try:
        world.expire_sessions()
        seq = last_seq(world)
        with pytest.raises(SessionExpired):
            stream.session_check()
        assert received(world, seq) == [("GET", "v1/rcc/Extension", 401)]
    finally:
        provider.close_stream(spec, stream)
