"""MyCrmProvider against the real simulator: REST calls, the listener flow, and a whole call's events."""

from __future__ import annotations

import time

import pytest
import requests
from requests.adapters import HTTPAdapter

from ctihub.lib.http_client import HttpClient
from telephony import updates as u
from telephony.models import PbxAccount
from telephony.providers import provider_for
from telephony.providers.base import NotSupported, ProviderError, SessionExpired
from telephony.providers.istra_mycrm.transport import MyCrmProvider, listener_payload
from tests.factories import make_account, make_call

pytestmark = pytest.mark.django_db

TERMINAL = "5985841581756135023"  # the doc's id: above 2**53, so it must stay a string
DESK = "5985841581756135024"


@pytest.fixture
def world(sim):
    world = sim.state.istra
    world.add_user("chatfield", "0000")
    world.add_user("nocrm", "pw", mycrm=False)
    world.add_extension(TERMINAL, "104", label="Chatfield", owner="chatfield")
    world.add_extension(DESK, "105", owner="chatfield", device_model="Yealink T46S")
    world.add_extension("7000000000000000001", "106", owner="bob")
    return world


def mycrm_account(sim, login: str = "chatfield", password: str = "0000") -> PbxAccount:
    return make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url=sim.istra_base, login=login, password=password)


@pytest.fixture
def provider(sim, world):
    provider = provider_for(mycrm_account(sim))
    yield provider
    provider.close()


def received(world, since: int = 0) -> list[tuple[str, str, int]]:
    """(method, path under /restletrouter/, status) of what the simulator received."""
    return [(e["method"], e["path"].removeprefix("/restletrouter/"), e["status"])
            for e in world.requests_received(since)]


def last_seq(world) -> int:
    entries = world.requests_received()
    return entries[-1]["seq"] if entries else 0


def read_updates(provider, spec, stream, count: int, timeout: float = 5.0) -> list:
    updates = []
    deadline = time.monotonic() + timeout
    while len(updates) < count and time.monotonic() < deadline:
        text = stream.recv(0.2)
        if text is not None:
            updates.extend(provider.parse_frame(text, spec))
    return updates


def test_it_is_the_registered_mycrm_provider(provider):
    assert isinstance(provider, MyCrmProvider)
    assert provider.holds_sockets


def test_it_tests_the_connection_by_logging_in_and_counting_terminals(provider, world):
    assert provider.test_connection() == "2 terminals"
    assert received(world) == [("POST", "v1/service/Login", 200), ("GET", "v1/crm/GetTerminals", 200)]


def test_it_fetches_the_users_terminals_with_exact_ids(provider):
    terminals = provider.fetch_terminals()
    assert [(t.pbx_id, t.device_model) for t in terminals] == [
        (TERMINAL, "SIP generic device"), (DESK, "Yealink T46S"),
    ]


def test_it_says_permanently_that_a_user_without_crm_rights_cannot_use_mycrm(sim, world):
    with pytest.raises(ProviderError) as refused:
        provider_for(mycrm_account(sim, "nocrm", "pw")).test_connection()
    assert (refused.value.permanent, refused.value.code) == (True, "MYCRM_ERR_403")


def test_it_places_a_call_with_a_get(provider, world):
    assert provider.place_call(TERMINAL, "555") == {}
    (place_call,) = [e for e in world.requests_received() if e["path"].endswith("/PlaceCall")]
    assert (place_call["method"], place_call["query"]) == ("GET", {"terminalId": TERMINAL, "destination": "555"})
    assert [line.state for line in world.calls.live_lines(TERMINAL)] == ["prompting"]


class SlowPlaceCall(HTTPAdapter):
    """The real simulator, except that PlaceCall answers too late."""

    attempts = 0

    def send(self, request, **kwargs):
        if "/PlaceCall" in request.url:
            self.attempts += 1
            raise requests.ReadTimeout("no answer in time")
        return super().send(request, **kwargs)


def test_it_never_dials_twice_because_placecall_answered_slowly(sim, world):
    slow = SlowPlaceCall()
    provider = MyCrmProvider(mycrm_account(sim), http=HttpClient("test", adapter=slow))
    with pytest.raises(ProviderError) as failed:
        provider.place_call(TERMINAL, "555")
    assert not failed.value.permanent
    assert slow.attempts == 1


def test_it_refuses_permanently_to_place_a_call_from_a_terminal_that_is_not_the_users(provider):
    with pytest.raises(ProviderError) as refused:
        provider.place_call("7000000000000000001", "555")
    assert (refused.value.permanent, refused.value.code, refused.value.status) == (True, "ERR_0", 400)


def test_it_reports_a_terminal_out_of_service_as_transient(provider, world):
    world.update_extension(TERMINAL, out_of_service=True)
    with pytest.raises(ProviderError) as failed:
        provider.place_call(TERMINAL, "555")
    assert (failed.value.permanent, failed.value.code, failed.value.status) == (False, "ERR_100", 512)


def test_it_reports_iptc_not_started_as_transient(provider, world):
    world.set_iptc(False)
    with pytest.raises(ProviderError) as failed:
        provider.place_call(TERMINAL, "555")
    assert (failed.value.permanent, failed.value.code) == (False, "ROUTER_ERR_503")


def test_it_renews_an_expired_session_without_failing_the_request(provider, world):
    provider.fetch_terminals()
    world.expire_sessions()
    assert len(provider.fetch_terminals()) == 2
    assert received(world)[1:] == [
        ("GET", "v1/crm/GetTerminals", 200),
        ("GET", "v1/crm/GetTerminals", 401),
        ("POST", "v1/service/Login", 200),
        ("GET", "v1/crm/GetTerminals", 200),
    ]
    relogin = world.requests_received()[-2]
    assert "cookie" not in {name.lower() for name in relogin["headers"]}  # not the expired session's cookie


def test_it_follows_a_rotated_token(provider, world):
    provider.fetch_terminals()
    world.rotate_tokens("myCrm")
    provider.fetch_terminals()
    provider.fetch_terminals()
    assert [status for _, _, status in received(world)] == [200, 200, 200, 200]


def test_it_has_no_call_control(provider, world):
    with pytest.raises(NotSupported):
        provider.call_action(make_call(provider.account), u.HOLD, {})
    assert world.requests_received() == []


def test_it_wants_one_listener_per_terminal_with_a_unique_name(provider):
    specs = provider.listener_specs([TERMINAL, DESK])
    assert [(s.name, s.terminal_pbx_id) for s in specs] == [(f"ctihub-{TERMINAL}", TERMINAL), (f"ctihub-{DESK}", DESK)]


def test_it_sends_the_two_line_listener_payload_of_the_doc():
    payload = listener_payload("CallLines", TERMINAL)
    assert payload == '{"name":"CallLines"}\n{"terminalId":"5985841581756135023"}'
    assert len(payload.encode()) == 57  # the doc's Content-Length


def test_it_opens_the_socket_creates_and_binds_the_listener_and_reads_a_whole_incoming_call(provider, world):
    (spec,) = provider.listener_specs([TERMINAL])
    stream = provider.open_stream(spec)
    try:
        entries = world.requests_received()
        assert [(e["method"], e["path"].removeprefix("/restletrouter/")) for e in entries] == [
            ("POST", "v1/service/Login"),
            ("GET", "ws-service/myCrm"),
            ("POST", "v1/service/EventListener/bean"),
            ("GET", "v1/crm/CallLine"),
        ]
        assert entries[2]["body"] == f'{{"name":"ctihub-{TERMINAL}"}}\n{{"terminalId":"{TERMINAL}"}}'
        assert entries[3]["query"] == {"listenerName": f"ctihub-{TERMINAL}", "terminalId": TERMINAL}

        line = world.incoming_call(TERMINAL, "0612345678", label="Dupont", e164="+33612345678", acd_id="0900000171")
        world.answer(line.line_id)
        world.hold(line.line_id)
        world.unhold(line.line_id)
        world.hangup(line.line_id)
        updates = read_updates(provider, spec, stream, count=5)
        stream.keepalive()
    finally:
        provider.close_stream(spec, stream)

    assert [x.state for x in updates] == [u.RINGING, u.TALKING, u.HELD, u.TALKING, u.ENDED]
    assert {x.pbx_call_id for x in updates} == {line.line_id}
    assert {x.terminal_pbx_id for x in updates} == {TERMINAL}
    ringing, ended = updates[0], updates[-1]
    assert (ringing.direction, ringing.is_internal, ringing.remote_number_e164, ringing.remote_label,
            ringing.external_phone) == (u.INBOUND, False, "+33612345678", "Dupont", "0900000171")
    assert ended.end_cause == u.END_HANGUP
    assert ended.talking_ms is not None and ended.ringing_ms is not None


def test_it_deletes_the_listener_on_close_and_logs_out(provider, world):
    (spec,) = provider.listener_specs([TERMINAL])
    stream = provider.open_stream(spec)
    seq = last_seq(world)
    provider.close_stream(spec, stream)
    provider.close()
    assert received(world, seq) == [
        ("DELETE", f"v1/service/EventListener/bean/ctihub-{TERMINAL}", 200),
        ("POST", "v1/service/Logout", 204),
    ]
    assert world.sessions.of_app("myCrm") == []


def test_it_closes_a_handed_over_listeners_socket_and_logs_out_without_deleting_the_listener(provider, world):
    # The new owner listens under the same name: if the PBX's listeners are the user's, a DELETE would end its.
    (spec,) = provider.listener_specs([TERMINAL])
    stream = provider.open_stream(spec)
    seq = last_seq(world)
    provider.close_stream(spec, stream, keep_listener=True)
    provider.close()
    assert received(world, seq) == [("POST", "v1/service/Logout", 204)]
    assert world.sessions.of_app("myCrm") == []


def test_it_binds_a_listener_another_session_holds_when_the_pbx_refuses_to_create_it_again(sim, provider, world):
    # A handover's taker, on a PBX whose listeners are the user's and which refuses a name that exists.
    from simulator.istra import variance

    variance.bean_scope(world, "user")
    (spec,) = provider.listener_specs([TERMINAL])
    owners = provider.open_stream(spec)
    taker = provider_for(mycrm_account(sim))
    try:
        world.fail_next(1, status=409, body={"code": "ERR_409", "message": "listener exists"}, path="EventListener")
        seq = last_seq(world)
        stream = taker.open_stream(spec)
        assert [request[::2] for request in received(world, seq)][-2:] == [("POST", 409), ("GET", 200)]
        world.incoming_call(TERMINAL, "0612345678")
        assert read_updates(taker, spec, stream, 1), "the taker's socket hears the listener's calls"
        assert read_updates(provider, spec, owners, 1), "and so does the owner's, until it closes"
        taker.close_stream(spec, stream, keep_listener=True)
    finally:
        taker.close()
        provider.close_stream(spec, owners)


def test_it_leaves_nothing_open_when_binding_the_listener_fails(provider, world):
    world.fail_next(1, status=512, body={"code": "ERR_100", "message": "Terminal out of service"},
                    path="v1/crm/CallLine")
    (spec,) = provider.listener_specs([TERMINAL])
    seq = last_seq(world)
    with pytest.raises(ProviderError):
        provider.open_stream(spec)
    # Logged out, not deleted: another worker's socket may be bound to a listener of that name (a handover).
    assert [request[:2] for request in received(world, seq)][-2:] == [
        ("GET", "v1/crm/CallLine"), ("POST", "v1/service/Logout")]
    assert world.sessions.of_app("myCrm") == []


def test_it_gives_the_stream_a_session_check_that_keeps_the_sockets_session_active(provider, world):
    (spec,) = provider.listener_specs([TERMINAL])
    stream = provider.open_stream(spec)
    try:
        (session,) = world.sessions.of_app("myCrm")
        session.last_seen -= 100  # as if idle for long: only a request on this session brings it back
        seq = last_seq(world)
        stream.session_check()
        assert received(world, seq) == [("GET", "v1/crm/GetTerminals", 200)]
        [check] = world.requests_received(seq)
        assert (check["query"], check["body"]) == ({}, "")
        assert f"myCrm_SESSIONID={session.id}" in check["headers"]["Cookie"]  # the socket's session, no other
        assert time.monotonic() - session.last_seen < 5
    finally:
        provider.close_stream(spec, stream)


def test_its_session_check_says_the_session_expired_and_does_not_log_in_again(provider, world):
    (spec,) = provider.listener_specs([TERMINAL])
    stream = provider.open_stream(spec)
    try:
        world.expire_sessions()
        seq = last_seq(world)
        with pytest.raises(SessionExpired):
            stream.session_check()
        assert received(world, seq) == [("GET", "v1/crm/GetTerminals", 401)]
    finally:
        provider.close_stream(spec, stream)


def test_it_queues_a_reconcile_from_the_call_history_each_time_a_socket_is_bound(provider, monkeypatch):
    # myCrm lists no live calls after a reconnect: the End User history of the same user ends what it missed.
    queued = []
    monkeypatch.setattr("ctihub.lib.queueing.enqueue",
                        lambda task, *args, countdown=None: queued.append((task.name, args, countdown)))
    (spec,) = provider.listener_specs([TERMINAL])
    stream = provider.open_stream(spec)
    try:
        assert queued == []  # queued when the supervisor takes the stream's catch-up, not before
        assert list(stream.initial_frames) == []  # no frame of its own
    finally:
        provider.close_stream(spec, stream)
    assert queued == [("telephony.providers.istra_enduser.tasks.reconcile_after_reconnect_task",
                       (provider.account.pk,), 2.0)]


def test_it_queues_one_reconcile_for_the_sockets_of_an_account_bound_within_a_second(provider, monkeypatch):
    # A worker joining takes hundreds of the account's sockets over: the reconcile reads the whole account's
    # history, so one queued to run a second or more after a socket connected covers it (issue 19).
    queued = []

    def enqueue(task, *args, countdown=None):
        queued.append((args, countdown))
        return True

    monkeypatch.setattr("ctihub.lib.queueing.enqueue", enqueue)
    now = [1000.0]
    monkeypatch.setattr("telephony.providers.istra_mycrm.transport.time.monotonic", lambda: now[0])
    first, second = provider.listener_specs([TERMINAL, DESK])
    streams = []
    try:
        for spec, at in ((first, 1000.0), (second, 1000.9)):
            now[0] = at
            stream = provider_for(provider.account).open_stream(spec)
            streams.append((spec, stream))
            assert list(stream.initial_frames) == []
        assert queued == [((provider.account.pk,), 2.0)]  # the second runs 1.1 s after its socket: covered
        now[0] = 1001.1  # the queued one runs 0.9 s from now: too soon after this socket connected
        assert list(provider_for(provider.account)._reconcile_later()) == []
        assert queued == [((provider.account.pk,), 2.0)] * 2
    finally:
        for spec, stream in streams:
            provider.close_stream(spec, stream)
