"""The simulated Istra myCrm API, exercised over real HTTP and websockets like a real client."""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
import time

import pytest
import requests
import websocket
from aiohttp.test_utils import TestClient, TestServer

from simulator.server import build_app
from simulator.state import SimulatorState
from tests.simulator.istra_client import IstraClient, SocketClosed

TERMINAL = "5985841581756135023"  # the doc's terminal id: above 2**53, so it must stay a string
OTHER_TERMINAL = "5985841581756135999"
SOMEONE_ELSES = "7000000000000000001"


@pytest.fixture
def platform(sim):
    """chatfield (CRM rights, two terminals), nocrm (no CRM rights), bob (another user), set up over the control API."""
    control = sim.url + "/_sim/istra"
    for user in (
        {"login": "chatfield", "password": "0000", "enterprise": "e1"},
        {"login": "nocrm", "password": "pw", "enterprise": "e1", "mycrm": False},
        {"login": "bob", "password": "pw", "enterprise": "e1"},
    ):
        assert requests.post(f"{control}/users", json=user).status_code == 201
    for extension in (
        {"id": TERMINAL, "number": "104", "label": "Chatfield", "owner": "chatfield", "pstnNumbers": ["+33412345104"]},
        {"id": OTHER_TERMINAL, "number": "105", "label": "Chatfield desk", "owner": "chatfield",
         "deviceModel": "Yealink T46S"},
        {"id": SOMEONE_ELSES, "number": "106", "label": "Bob", "owner": "bob"},
        {"id": "7000000000000000002", "number": "107", "owner": "nocrm"},
    ):
        assert requests.post(f"{control}/extensions", json=extension).status_code == 201
    return sim


@pytest.fixture
def crm(platform):
    client = IstraClient(platform.istra_base, "myCrm")
    assert client.login("ENDUSER:chatfield", "0000").status_code == 200
    return client


def listen(client: IstraClient, terminal: str = TERMINAL, name: str = "CallLines"):
    """The doc's call flow: websocket with the cookie, create the listener, bind it."""
    socket = client.open_socket()
    created = client.post("v1/service/EventListener/bean", data=f'{{"name":"{name}"}}\n{{"terminalId":"{terminal}"}}')
    assert created.status_code == 200, created.text
    bound = client.get("v1/crm/CallLine", params={"listenerName": name, "terminalId": terminal})
    assert bound.status_code == 200, bound.text
    return socket


def control(sim, method: str, path: str, **kwargs) -> requests.Response:
    response = requests.request(method, f"{sim.url}/_sim/istra/{path}", **kwargs)
    assert response.status_code < 300, response.text
    return response


# --- login ------------------------------------------------------------------------------------

def test_it_logs_in_with_enduser_basic_auth_and_answers_cookie_and_token(platform):
    response = requests.post(
        platform.istra_base + "/v1/service/Login",
        headers={
            "X-Application": "myCrm",
            "Authorization": "Basic " + base64.b64encode(b"ENDUSER:chatfield:0000").decode(),
            "Content-Type": "application/json",
        },
    )

    assert response.status_code == 200
    assert re.fullmatch(r"myCrm_SESSIONID=\d{19};Path=/restletrouter;HttpOnly", response.headers["Set-Cookie"])
    assert re.fullmatch(r"myCrm;[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        response.headers["X-Application"])


@pytest.mark.parametrize("username, password", [
    ("ENDUSER:chatfield", "wrong"),
    ("chatfield", "0000"),  # the ENDUSER: prefix is required
    ("ENDUSER:nobody", "0000"),
])
def test_it_refuses_bad_credentials_with_401_and_a_json_error(platform, username, password):
    response = IstraClient(platform.istra_base, "myCrm").login(username, password)

    assert response.status_code == 401
    assert response.json()["code"] == "ROUTER_ERR_401"
    assert "Set-Cookie" not in response.headers


def test_it_refuses_login_without_the_x_application_header(platform):
    response = requests.post(platform.istra_base + "/v1/service/Login", auth=("ENDUSER:chatfield", "0000"))

    assert response.status_code == 401
    assert "code" in response.json()


def test_it_refuses_a_user_whose_extension_is_not_allowed_for_mycrm(platform):
    response = IstraClient(platform.istra_base, "myCrm").login("ENDUSER:nocrm", "pw")

    assert response.status_code == 401
    assert response.json() == {"code": "MYCRM_ERR_403", "message": "user extension not allowed for myCRM"}


# --- cookie and token ---------------------------------------------------------------------------

def test_it_answers_403_router_err_400_when_the_token_does_not_match_the_cookie(crm):
    wrong_token = crm.get("v1/crm/GetTerminals", headers={"X-Application": "myCrm;not-the-token"})
    no_token = crm.get("v1/crm/GetTerminals", headers={"X-Application": "myCrm"})

    for response in (wrong_token, no_token):
        assert response.status_code == 403
        assert response.json() == {"code": "ROUTER_ERR_400", "message": "cookie session doesn't match authorisation sent"}


def test_it_answers_401_without_a_session_cookie_or_with_an_unknown_one(crm):
    headers = crm.headers()
    without_cookie = requests.get(crm.base + "v1/crm/GetTerminals", headers=headers)
    unknown_cookie = requests.get(crm.base + "v1/crm/GetTerminals", headers=headers,
                                  cookies={"myCrm_SESSIONID": "1234567890123456789"})

    assert without_cookie.status_code == 401
    assert unknown_cookie.status_code == 401
    assert unknown_cookie.json()["code"] == "ROUTER_ERR_401"


def test_it_rotates_the_token_on_a_normal_response_and_refuses_the_old_one_afterwards(crm, platform):
    old_token = crm.token
    assert crm.get("v1/crm/GetTerminals").headers.get("X-Application") is None  # nothing new: no header

    control(platform, "POST", "sessions/rotate-token", json={"app": "myCrm"})
    rotated = crm.get("v1/crm/GetTerminals")

    assert rotated.status_code == 200
    assert rotated.headers["X-Application"] == f"myCrm;{crm.token}"
    assert crm.token != old_token
    stale = crm.get("v1/crm/GetTerminals", headers={"X-Application": f"myCrm;{old_token}"})
    assert stale.status_code == 403
    assert crm.get("v1/crm/GetTerminals").status_code == 200


def test_it_expires_a_session_after_the_configured_inactivity_and_closes_its_websocket(crm, platform):
    control(platform, "PATCH", "config", json={"sessionTimeout": 0.4})
    socket = crm.open_socket()
    time.sleep(0.25)
    assert crm.get("v1/crm/GetTerminals").status_code == 200  # activity keeps it alive
    time.sleep(0.25)
    assert crm.get("v1/crm/GetTerminals").status_code == 200

    time.sleep(0.9)

    assert crm.get("v1/crm/GetTerminals").status_code == 401
    with pytest.raises(SocketClosed) as closed:
        socket.next_frame(timeout=2)
    assert closed.value.code == 1008


def test_it_expires_every_session_on_demand(crm, platform):
    assert control(platform, "POST", "sessions/expire").json() == {"expired": 1}

    response = crm.get("v1/crm/GetTerminals")

    assert response.status_code == 401
    assert crm.login("ENDUSER:chatfield", "0000").status_code == 200  # a new login works
    assert crm.get("v1/crm/GetTerminals").status_code == 200


# --- terminals and listeners -------------------------------------------------------------------

def test_it_lists_the_users_terminals_with_64_bit_ids_as_strings(crm):
    response = crm.get("v1/crm/GetTerminals")

    assert response.status_code == 200
    assert f'"terminalId": "{TERMINAL}"' in response.text
    assert response.json() == [
        {"deviceModel": "SIP generic device", "terminalId": TERMINAL},
        {"deviceModel": "Yealink T46S", "terminalId": OTHER_TERMINAL},
    ]


def test_it_creates_a_listener_from_the_two_line_payload_of_the_doc(crm, platform):
    payload = '{"name":"CallLines"}\n{"terminalId":"5985841581756135023"}'

    response = crm.post("v1/service/EventListener/bean", data=payload)

    assert response.status_code == 200
    assert response.json() == {"name": "CallLines", "restUri": "v1/service/EventListener/bean/CallLines"}
    logged = platform.state.istra.requests_received()[-1]
    assert logged["headers"]["Content-Length"] == "57"
    assert logged["body"] == payload
    sessions = control(platform, "GET", "sessions").json()
    assert sessions[0]["listeners"]["CallLines"]["terminalId"] == TERMINAL


def test_it_accepts_a_listener_payload_with_the_name_only_and_deletes_listeners(crm):
    created = crm.post("v1/service/EventListener/bean", json={"name": "Other"})
    deleted = crm.delete("v1/service/EventListener/bean/Other")
    deleted_again = crm.delete("v1/service/EventListener/bean/Other")

    assert created.json() == {"name": "Other", "restUri": "v1/service/EventListener/bean/Other"}
    assert deleted.status_code == 200
    assert deleted_again.status_code == 400
    assert deleted_again.json()["code"] == "ERR_0"


def test_it_refuses_to_bind_an_unknown_listener_or_someone_elses_terminal(crm):
    crm.post("v1/service/EventListener/bean", json={"name": "CallLines"})

    unknown = crm.get("v1/crm/CallLine", params={"listenerName": "Nope", "terminalId": TERMINAL})
    foreign = crm.get("v1/crm/CallLine", params={"listenerName": "CallLines", "terminalId": SOMEONE_ELSES})

    assert unknown.status_code == 400
    assert foreign.status_code == 400
    assert foreign.json()["message"] == "bad terminal ID"


# --- call events --------------------------------------------------------------------------------

def test_it_pushes_every_event_of_an_incoming_call_to_the_bound_websocket(crm, platform):
    socket = listen(crm)
    call = control(platform, "POST", "calls/incoming", json={
        "terminalId": TERMINAL, "from": "0612345678", "e164": "+33612345678", "label": "Mr Smith", "acdId": "0900000171",
    }).json()
    call_id = call["callId"]
    common = {
        "acdId": "0900000171", "callId": call_id, "displayLabel": "Mr Smith", "displayNumber": "0612345678",
        "displayNumberE164": "+33612345678", "incoming": True, "type": "external",
    }

    ringing = socket.next_frame()
    time.sleep(0.05)
    control(platform, "POST", f"calls/{call_id}/answer")
    talking = socket.next_item()
    control(platform, "POST", f"calls/{call_id}/hold")
    held = socket.next_item()
    control(platform, "POST", f"calls/{call_id}/unhold")
    resumed = socket.next_item()
    time.sleep(0.05)
    control(platform, "POST", f"calls/{call_id}/hangup")
    dropped = socket.next_item()

    assert re.fullmatch(r"-\d+", call_id)
    assert ringing == {"listenerName": "CallLines", "item": [{**common, "event": "callRinging"}]}
    assert talking == {**common, "event": "callTalking", "talkCause": "answer"}
    assert held == {"callId": call_id, "event": "callHeld"}
    assert resumed == {**common, "event": "callTalking", "talkCause": "unHold"}
    times = {key: dropped.pop(key) for key in ("ringingTime", "talkingTime")}
    assert dropped == {**common, "event": "callDropped", "dropCause": "disconnect"}
    assert all(isinstance(value, str) for value in times.values())  # milliseconds, as strings
    assert int(times["ringingTime"]) >= 40 and int(times["talkingTime"]) >= 40


def test_it_sends_the_field_values_a_test_chose_in_the_events_that_carry_those_fields(crm, platform):
    control(platform, "POST", "faults/field-values",
            json={"app": "myCrm", "fields": {"ringingTime": "-1", "incoming": "TRUE", "talkCause": None}})
    socket = listen(crm)
    call_id = control(platform, "POST", "calls/incoming", json={"terminalId": TERMINAL, "from": "0612345678"}
                      ).json()["callId"]
    ringing = socket.next_item()
    control(platform, "POST", f"calls/{call_id}/answer")
    talking = socket.next_item()
    control(platform, "POST", f"calls/{call_id}/hangup")
    dropped = socket.next_item()

    assert (ringing["incoming"], "ringingTime" in ringing) == ("TRUE", False)  # nothing added
    assert (talking["incoming"], talking["talkCause"]) == ("TRUE", None)
    assert (dropped["event"], dropped["ringingTime"], dropped["incoming"]) == ("callDropped", "-1", "TRUE")
    assert dropped["talkingTime"].isdigit()  # a field not chosen keeps our value
    assert control(platform, "GET", "faults/variance").json()["fieldValues"] == {
        "myCrm": {"ringingTime": "-1", "incoming": "TRUE", "talkCause": None}}


def test_it_places_a_call_and_reports_it_from_alerting_to_dropped(crm, platform):
    socket = listen(crm)

    response = crm.get("v1/crm/PlaceCall", params={"terminalId": TERMINAL, "destination": "555"})

    assert response.status_code == 200
    call = control(platform, "GET", "calls").json()[0]
    assert (call["state"], call["destination"]) == ("prompting", "555")
    socket.assert_silent(0.15)  # the doc has no event for the prompting leg
    control(platform, "POST", f"calls/{call['callId']}/answer")  # the user's phone goes off-hook
    alerting = socket.next_item()
    control(platform, "POST", f"calls/{call['callId']}/hangup", json={"cause": "busy"})
    dropped = socket.next_item()

    assert alerting == {
        "callId": call["callId"], "displayLabel": "", "displayNumber": "555", "displayNumberE164": "555",
        "event": "callAlerting", "incoming": False, "type": "external",
    }
    assert (dropped["event"], dropped["dropCause"], dropped["talkingTime"]) == ("callDropped", "busy", "0")


def test_it_rings_both_ends_of_an_internal_call_as_internal(crm, platform):
    socket = listen(crm)
    crm.post("v1/service/EventListener/bean", data=f'{{"name":"Desk"}}\n{{"terminalId":"{OTHER_TERMINAL}"}}')
    crm.get("v1/crm/CallLine", params={"listenerName": "Desk", "terminalId": OTHER_TERMINAL})

    platform.state.istra.outgoing_call(TERMINAL, "105")  # 104 dials 105, driven from Python
    first, second = socket.next_frame(), socket.next_frame()

    by_listener = {frame["listenerName"]: frame["item"][0] for frame in (first, second)}
    assert by_listener["CallLines"]["event"] == "callAlerting"
    assert by_listener["CallLines"]["displayNumber"] == "105"
    assert by_listener["Desk"]["event"] == "callRinging"
    assert by_listener["Desk"]["displayNumberE164"] == "+33412345104"
    assert {item["type"] for item in by_listener.values()} == {"internal"}


def test_it_sends_events_only_to_sessions_bound_to_the_terminal(crm, platform):
    socket = listen(crm)
    bob = IstraClient(platform.istra_base, "myCrm")
    bob.login("ENDUSER:bob", "pw")
    bob_socket = bob.open_socket()  # connected, but no listener bound

    platform.state.istra.incoming_call(SOMEONE_ELSES, "0611111111")
    platform.state.istra.incoming_call(TERMINAL, "0622222222")

    assert socket.next_item()["displayNumber"] == "0622222222"
    socket.assert_silent(0.2)
    bob_socket.assert_silent(0.1)


def test_it_keeps_the_binding_when_the_websocket_is_dropped_and_reopened(crm, platform):
    socket = listen(crm)

    assert control(platform, "POST", "websockets/drop").json() == {"dropped": 1}

    with pytest.raises(SocketClosed) as closed:
        socket.next_frame(timeout=2)
    assert closed.value.code is None  # no close frame: cut like a network failure
    reopened = crm.open_socket()
    platform.state.istra.incoming_call(TERMINAL, "0633333333")
    assert reopened.next_item()["event"] == "callRinging"


def test_it_closes_the_websockets_cleanly_with_the_code_asked_and_keeps_the_session(crm, platform):
    socket = listen(crm)

    assert control(platform, "POST", "websockets/close", json={"code": 1001, "reason": "restarting"}).json() == \
        {"closed": 1}

    with pytest.raises(SocketClosed) as closed:
        socket.next_frame(timeout=2)
    assert closed.value.code == 1001  # a close frame, unlike websockets/drop
    reopened = crm.open_socket()  # the same session: its cookie still opens a socket
    platform.state.istra.incoming_call(TERMINAL, "0633333333")
    assert reopened.next_item()["event"] == "callRinging"


# --- PlaceCall errors ------------------------------------------------------------------------------

def test_it_answers_400_err_0_for_a_terminal_that_is_not_the_users(crm):
    response = crm.get("v1/crm/PlaceCall", params={"terminalId": SOMEONE_ELSES, "destination": "555"})

    assert response.status_code == 400
    body = response.json()
    assert re.fullmatch(r"restletapi_exception_\d{13}", body.pop("exceptionId"))
    assert body == {
        "message": "bad terminal ID", "code": "ERR_0", "firstMessage": "bad terminal ID",
        "info": {"type": {"id": "ERR_0", "msg": "Bad Request"}},
    }


def test_it_answers_512_err_100_for_a_terminal_out_of_service(crm, platform):
    control(platform, "PATCH", f"extensions/{TERMINAL}", json={"outOfService": True})

    response = crm.get("v1/crm/PlaceCall", params={"terminalId": TERMINAL, "destination": "555"})

    assert response.status_code == 512
    body = response.json()
    assert body.pop("exceptionId").startswith("restletapi_exception_")
    assert body == {
        "message": "Terminal out of service", "code": "ERR_100", "firstMessage": "Terminal out of service",
        "info": {"type": {"id": "ERR_100", "msg": "Invalid State"}, "model": "terminal",
                 "value": "OutOfService", "property": "state"},
    }


def test_it_answers_503_router_err_503_while_the_iptc_is_down(crm, platform):
    control(platform, "POST", "iptc", json={"up": False})

    down = crm.get("v1/crm/PlaceCall", params={"terminalId": TERMINAL, "destination": "555"})
    control(platform, "POST", "iptc", json={"up": True})
    up = crm.get("v1/crm/PlaceCall", params={"terminalId": TERMINAL, "destination": "555"})

    assert down.status_code == 503
    assert down.json() == {"code": "ROUTER_ERR_503", "message": "IPTC not started"}
    assert up.status_code == 200


def test_it_fails_the_next_n_requests_with_the_armed_status(crm, platform):
    control(platform, "POST", "faults/fail-next", json={"count": 2})

    answers = [crm.get("v1/crm/GetTerminals") for _ in range(3)]

    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].json() == {"code": "ROUTER_ERR_503", "message": "IPTC not started"}


# --- transport -------------------------------------------------------------------------------------

def test_it_gzips_json_answers_when_the_client_accepts_gzip(crm):
    zipped = crm.get("v1/crm/GetTerminals", headers={"Accept-Encoding": "gzip,deflate"}, stream=True)
    plain = crm.get("v1/crm/GetTerminals", headers={"Accept-Encoding": "identity"})

    assert zipped.headers["Content-Encoding"] == "gzip"
    raw = zipped.raw.read(decode_content=False)
    assert gzip.decompress(raw).decode() == plain.text
    assert "Content-Encoding" not in plain.headers


def test_it_logs_every_request_with_method_path_headers_and_body(crm, platform):
    control(platform, "DELETE", "requests")
    crm.get("v1/crm/PlaceCall", params={"terminalId": TERMINAL, "destination": "555"})

    logged = control(platform, "GET", "requests").json()

    assert len(logged) == 1
    entry = logged[0]
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/restletrouter/v1/crm/PlaceCall", 200)
    assert entry["query"] == {"terminalId": TERMINAL, "destination": "555"}
    assert entry["headers"]["X-Application"] == f"myCrm;{crm.token}"
    assert entry["headers"]["Cookie"] == f"myCrm_SESSIONID={crm.session_id}"
    assert entry["headers"]["Content-Type"] == "application/json"
    assert control(platform, "GET", f"requests?since={entry['seq']}").json() == []


def test_it_refuses_a_websocket_without_a_session_cookie(platform):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(platform.istra_base.replace("http", "ws") + "/ws-service/myCrm", timeout=3)

    assert refused.value.status_code == 401


async def _listen_as_alice_on_terminal_42(client):
    """myCrm as a client does it: log in, open the socket, subscribe listener "L" to terminal 42, ask its lines."""
    # Built by hand: aiohttp.BasicAuth refuses the ":" of "ENDUSER:alice".
    basic = "Basic " + base64.b64encode(b"ENDUSER:alice:pw").decode()
    login = await client.post("/restletrouter/v1/service/Login",
                              headers={"X-Application": "myCrm", "Authorization": basic})
    headers = {"X-Application": login.headers["X-Application"]}
    ws = await client.ws_connect("/restletrouter/ws-service/myCrm")
    await client.post("/restletrouter/v1/service/EventListener/bean", headers=headers,
                      data='{"name":"L"}\n{"terminalId":"42"}')
    await client.get("/restletrouter/v1/crm/CallLine?listenerName=L&terminalId=42", headers=headers)
    return ws


def test_it_builds_in_process_and_is_driven_from_python():
    async def scenario() -> list[dict]:
        state = SimulatorState()
        state.istra.add_user("alice", "pw")
        state.istra.add_terminal("42", "201", owner="alice")
        async with TestClient(TestServer(build_app(state))) as client:
            ws = await _listen_as_alice_on_terminal_42(client)
            line = state.istra.incoming_call("42", "0600000000")
            state.istra.hangup(line.line_id, "noAnswer")
            frames = [await ws.receive_json(timeout=2) for _ in range(2)]
            await ws.close()
            return frames

    frames = asyncio.run(scenario())

    assert [f["item"][0]["event"] for f in frames] == ["callRinging", "callDropped"]
    assert frames[1]["item"][0]["dropCause"] == "noAnswer"


def test_it_pushes_a_call_s_frames_without_going_through_the_calls_ended_before():
    """A benchmark sends tens of thousands of calls through one simulator: each event scanned every line ever
    made (the myRCC publisher's siblings, each line's ``actions``) and sorted and counted the user's whole
    call history, so the simulator's CPU per frame grew the longer it ran. The frames stay exactly the same."""

    class Watched(dict):
        scans = 0

        def values(self):
            Watched.scans += 1
            return super().values()

    counted = []

    async def scenario() -> list[str]:
        from simulator.istra import myistra

        state = SimulatorState()
        world = state.istra
        world.add_user("alice", "pw")
        world.add_terminal("42", "201", owner="alice")
        async with TestClient(TestServer(build_app(state))) as client:
            for n in range(300):  # calls ended before: in the call book and in alice's history
                world.hangup(world.incoming_call("42", f"06000{n:05d}").line_id, "noAnswer")
            ws = await _listen_as_alice_on_terminal_42(client)
            world.calls.lines = Watched(world.calls.lines)
            counters = myistra.EndUser.counters
            myistra.EndUser.counters = lambda user: counted.append(user) or counters(user)
            try:
                line = world.incoming_call("42", "0611111111", label="Bea")
                world.answer(line.line_id)
                world.hangup(line.line_id)
            finally:
                myistra.EndUser.counters = counters
            texts = [(await ws.receive(timeout=2)).data for _ in range(3)]
            await ws.close()
            history = world.enduser.user("alice").history
            # Newest first, and within a second in the order they came: as a stable sort put them.
            assert len(history) == 301 and sorted(history, key=lambda h: h.timestamp, reverse=True) == history
            last = max(h.timestamp for h in history)
            assert [h for h in history if h.timestamp == last][-1].remote_number == "0611111111"
            return texts

    texts = asyncio.run(scenario())

    assert Watched.scans == 0, "an event went through every line ever made"
    assert counted == [], "the myIstra counters were counted with nobody subscribed to them"
    line_id = re.search(r'"callId": "(-\d+)"', texts[0]).group(1)
    assert texts[0] == ('{"listenerName": "L", "item": [{"callId": "%s", "displayLabel": "Bea", "displayNumber": '
                        '"0611111111", "displayNumberE164": "0611111111", "event": "callRinging", "incoming": true, '
                        '"type": "external"}]}' % line_id)
    assert re.fullmatch(r'\{"listenerName": "L", "item": \[\{"callId": "%s", "displayLabel": "Bea", "displayNumber": '
                        r'"0611111111", "displayNumberE164": "0611111111", "dropCause": "disconnect", "event": '
                        r'"callDropped", "incoming": true, "ringingTime": "\d+", "talkingTime": "\d+", '
                        r'"type": "external"\}\]\}' % line_id, texts[2]), texts[2]
