"""The Istra simulator's fault modes the socket fault suite plays, exercised like a real client would meet them.

Session expiry by inactivity (websocket pings are not activity), expiry that leaves the sockets open,
expiry of one application's sessions, which states a client of each application was told (``reportedBy``),
the myCrm call answered or ended while no socket was bound, "N x 503 then close", what an IPTC outage
refuses, a user suspended after wrong passwords in a row, and a permanent redirect to another host name.
Every one of them is off unless a test turns it on.
"""

from __future__ import annotations

import time

import pytest
import requests
import websocket

from simulator.istra import SWEEP_EVERY, sessions
from tests.simulator.istra_client import IstraClient, SocketClosed
from tests.support.sim_control import IstraControl

TERMINAL = "5985841581756135023"
APP_PATHS = {"myCrm": "v1/crm/GetTerminals", "myRCC": "v1/rcc/Extension", "myIstra": "v1/user/Info"}


def control(sim, method: str, path: str, expect: int | None = None, **kwargs) -> requests.Response:
    response = requests.request(method, f"{sim.url}/_sim/istra/{path}", timeout=5, **kwargs)
    if expect is None:
        assert response.status_code < 300, response.text
    else:
        assert response.status_code == expect, response.text
    return response


@pytest.fixture
def platform(sim):
    """chatfield: myCrm, myRCC admin of e1 and an End User (myIstra), owner of one terminal."""
    control(sim, "POST", "users", json={"login": "chatfield", "password": "0000", "enterprise": "e1"})
    control(sim, "POST", "extensions", json={"id": TERMINAL, "number": "104", "label": "Chatfield",
                                             "owner": "chatfield"})
    return sim


def logged_in(sim, app: str) -> IstraClient:
    client = IstraClient(sim.istra_base, app)
    user = "chatfield|e1" if app == "myRCC" else "ENDUSER:chatfield"
    assert client.login(user, "0000").status_code == 200
    return client


def listen_mycrm(client: IstraClient):
    socket = client.open_socket()
    client.post("v1/service/EventListener/bean", data=f'{{"name":"CallLines"}}\n{{"terminalId":"{TERMINAL}"}}')
    assert client.get("v1/crm/CallLine", params={"listenerName": "CallLines", "terminalId": TERMINAL}).ok
    return socket


def monitor_myrcc(client: IstraClient):
    socket = client.open_socket()
    client.post("v1/service/EventListener/bean", json={"name": "CallLines"})
    assert client.get("v1/rcc/CallLine", params={"listenerName": "CallLines"}).ok
    return socket


def subscribe_myistra(client: IstraClient):
    socket = client.open_socket()
    client.post("v1/service/EventListener/bean", json={"name": "Counters"})
    assert client.get("v1/logs/Notifications/bean", params={"listenerName": "Counters"}).ok
    return socket


def wait_until(predicate, timeout: float = 3.0) -> float:
    """Seconds it took for ``predicate`` to hold."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


def live_sessions(sim) -> list[dict]:
    return control(sim, "GET", "sessions").json()


def line(sim, call_id: str) -> dict:
    return control(sim, "GET", f"calls/{call_id}").json()


class ShiftedClock:
    """``time`` for ``simulator.istra.sessions``, with ``monotonic()`` moved ``shift`` seconds ahead."""

    def __init__(self) -> None:
        self.shift = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.shift


def closed_code(socket, timeout: float = 3.0) -> int | None:
    with pytest.raises(SocketClosed) as closed:
        socket.next_frame(timeout=timeout)
    return closed.value.code


# --- expiry by inactivity ------------------------------------------------------------------------------

def test_it_sweeps_often_enough_that_an_expired_session_goes_within_a_second():
    assert SWEEP_EVERY <= 1.0


@pytest.mark.parametrize("app", ["myCrm", "myRCC", "myIstra"])
def test_it_expires_a_session_whose_socket_only_answers_pings(platform, app):
    control(platform, "PATCH", "config", json={"sessionTimeout": 1.0})
    client = logged_in(platform, app)
    socket = client.open_socket()
    opened = time.monotonic()

    answered, last_ping = 0, 0.0
    while time.monotonic() - opened < 0.9:  # no ping once it is due: a write could race the close frame
        last_ping = time.monotonic() - opened
        answered += socket.ping(timeout=0.5)
        time.sleep(0.1)
    code = closed_code(socket)
    lasted = time.monotonic() - opened

    assert answered >= 6  # every ping was answered, and none of them kept the session alive:
    assert code == 1008
    # Due at 1.0 s, swept within SWEEP_EVERY; had the last ping counted, not before it plus the timeout
    # (about 1.9 s). The room in between (0.6 s) is what a busy machine may add to the sweep's wait.
    assert 1.0 <= lasted < last_ping + 1.0, (lasted, last_ping)
    assert client.get(APP_PATHS[app]).status_code == 401


def test_it_keeps_a_session_alive_while_its_socket_sends_text_frames(platform):
    control(platform, "PATCH", "config", json={"sessionTimeout": 0.5})
    client = logged_in(platform, "myCrm")
    socket = client.open_socket()

    for _ in range(8):  # 1.2 s, over twice the timeout, with no REST request
        socket.send_text('{"keepalive": "true"}')
        time.sleep(0.15)

    assert [s["id"] for s in live_sessions(platform)] == [client.session_id]
    assert socket.ping()
    assert client.get("v1/crm/GetTerminals").status_code == 200


def test_it_does_not_revive_a_session_past_its_timeout_with_a_late_text_frame(platform, monkeypatch):
    clock = ShiftedClock()
    monkeypatch.setattr(sessions, "time", clock)
    control(platform, "PATCH", "config", json={"sessionTimeout": 30})
    client = logged_in(platform, "myCrm")
    socket = client.open_socket()

    clock.shift = 31  # due, whether or not the sweeper has run yet
    socket.send_text('{"keepalive": "true"}')

    assert closed_code(socket) == 1008
    assert client.get("v1/crm/GetTerminals").status_code == 401


def test_it_expires_a_30_s_session_within_a_second_of_its_due_time(platform, monkeypatch):
    clock = ShiftedClock()
    monkeypatch.setattr(sessions, "time", clock)
    control(platform, "PATCH", "config", json={"sessionTimeout": 30})
    client = logged_in(platform, "myRCC")
    socket = client.open_socket()

    clock.shift = 29.0
    time.sleep(0.6)  # a few sweeps: still 0.4 s to go
    still_there = len(live_sessions(platform))
    clock.shift = 30.05
    took = wait_until(lambda: not live_sessions(platform))

    assert still_there == 1
    assert took < 1.0
    assert closed_code(socket) == 1008
    assert client.get("v1/rcc/Extension").status_code == 401


# --- expiry with the sockets left open -------------------------------------------------------------------

def test_it_forgets_an_idle_session_but_leaves_its_socket_open_when_so_configured(platform):
    control(platform, "PATCH", "config", json={"sessionTimeout": 0.5, "expiryClosesSockets": False})
    client = logged_in(platform, "myCrm")
    socket = listen_mycrm(client)

    wait_until(lambda: not live_sessions(platform))
    call = control(platform, "POST", "calls/incoming", json={"terminalId": TERMINAL, "from": "0612345678"}).json()

    assert client.get("v1/crm/GetTerminals").status_code == 401
    socket.assert_silent(0.4)  # the call rang, but nothing reaches a forgotten session
    assert socket.ping()  # and it still looks alive from the client's side
    [stats] = control(platform, "GET", "websockets").json()
    assert (stats["app"], stats["sessionLive"], stats["framesSent"]) == ("myCrm", False, 0)
    assert line(platform, call["callId"])["reportedBy"]["myCrm"] == []
    with pytest.raises(websocket.WebSocketBadStatusException):
        client.open_socket()  # the old cookie cannot open another one


def test_it_still_cuts_and_resets_the_sockets_of_forgotten_sessions(platform):
    client = logged_in(platform, "myCrm")
    socket = client.open_socket()
    other = logged_in(platform, "myCrm").open_socket()
    control(platform, "POST", "sessions/expire", json={"closeSockets": False})

    dropped = control(platform, "POST", "websockets/drop").json()

    assert dropped == {"dropped": 2}
    assert closed_code(socket) is None and closed_code(other) is None
    assert control(platform, "GET", "websockets").json() == []


def test_it_cancels_a_myrcc_snapshot_already_due_when_it_forgets_the_session(platform):
    control(platform, "PATCH", "config", json={"pushInterval": 0.5})
    client = logged_in(platform, "myRCC")
    socket = monitor_myrcc(client)
    world = platform.state.istra
    ringing = world.incoming_call(TERMINAL, "0612345678")
    first = socket.next_item()  # the first change of an interval goes at once
    world.answer(ringing.line_id)  # this one waits for the end of the interval

    assert control(platform, "POST", "sessions/expire", json={"app": "myRCC", "closeSockets": False}).json() == {
        "expired": 1}

    assert first["state"] == "ringing"
    socket.assert_silent(0.8)
    assert socket.ping()
    assert line(platform, ringing.line_id)["reportedBy"]["myRCC"] == ["ringing"]


def test_it_pushes_no_myistra_counters_to_a_forgotten_session(platform):
    client = logged_in(platform, "myIstra")
    socket = subscribe_myistra(client)
    control(platform, "POST", "enduser/voicemails", json={"login": "chatfield", "from": "0612345678"})
    before = socket.next_frame()  # while the session lives, counters are pushed

    control(platform, "POST", "sessions/expire", json={"app": "myIstra", "closeSockets": False})
    control(platform, "POST", "enduser/voicemails", json={"login": "chatfield", "from": "0612345678"})

    assert before["item"]["unreadVoiceMails"] == 1
    socket.assert_silent(0.3)
    assert socket.ping()
    assert client.get("v1/user/Info").status_code == 401


def test_it_expires_only_the_sessions_of_the_app_named(platform):
    clients = {app: logged_in(platform, app) for app in APP_PATHS}

    expired = control(platform, "POST", "sessions/expire", json={"app": "myRCC"}).json()

    assert expired == {"expired": 1}
    assert {app: clients[app].get(path).status_code for app, path in APP_PATHS.items()} == {
        "myCrm": 200, "myRCC": 401, "myIstra": 200}


def test_it_lets_an_explicit_close_sockets_override_the_config(platform):
    control(platform, "PATCH", "config", json={"expiryClosesSockets": False})
    closing = logged_in(platform, "myCrm").open_socket()
    control(platform, "POST", "sessions/expire", json={"closeSockets": True})
    control(platform, "PATCH", "config", json={"expiryClosesSockets": True})
    lingering = logged_in(platform, "myCrm").open_socket()
    control(platform, "POST", "sessions/expire", json={"closeSockets": False})

    assert closed_code(closing) == 1008
    assert lingering.ping()
    lingering.assert_silent(0.3)


def test_it_closes_the_sockets_of_expired_sessions_by_default(platform):
    assert control(platform, "GET", "state").json()["config"]["expiryClosesSockets"] is True
    socket = logged_in(platform, "myCrm").open_socket()

    control(platform, "POST", "sessions/expire")

    assert closed_code(socket) == 1008


def test_it_takes_app_and_close_sockets_from_python_and_from_the_test_client(platform):
    world = platform.state.istra
    crm, rcc = logged_in(platform, "myCrm"), logged_in(platform, "myRCC")
    crm_socket, rcc_socket = crm.open_socket(), rcc.open_socket()

    by_python = world.expire_sessions(app="myCrm", close_sockets=False)
    by_client = IstraControl(platform.url).expire_sessions(app="myRCC", close_sockets=True)

    assert (by_python, by_client) == (1, {"expired": 1})
    assert crm_socket.ping()
    assert closed_code(rcc_socket) == 1008
    assert IstraControl(platform.url).expire_sessions() == {"expired": 0}  # the old call still works


@pytest.mark.parametrize("path, body", [
    ("sessions/expire", {"app": "myPBX"}),
    ("sessions/expire", {"closeSockets": "yes"}),
    ("sessions/expire", {"apps": "myCrm"}),
])
def test_it_refuses_a_bad_expire_body(platform, path, body):
    assert "error" in control(platform, "POST", path, expect=400, json=body).json()


def test_it_refuses_a_close_sockets_setting_that_is_not_a_boolean(platform):
    control(platform, "PATCH", "config", expect=400, json={"expiryClosesSockets": "no"})

    assert control(platform, "GET", "state").json()["config"]["expiryClosesSockets"] is True


# --- which calls a client of each application could know of ---------------------------------------------

def test_it_records_which_states_a_client_of_each_app_was_told(platform):
    control(platform, "PATCH", "config", json={"pushInterval": 0.05})
    crm_socket = listen_mycrm(logged_in(platform, "myCrm"))
    rcc_socket = monitor_myrcc(logged_in(platform, "myRCC"))
    world = platform.state.istra

    call_id = world.incoming_call(TERMINAL, "0612345678").line_id
    time.sleep(0.1)
    world.answer(call_id)
    time.sleep(0.1)
    world.hangup(call_id)
    time.sleep(0.1)

    told = line(platform, call_id)
    assert [f["item"][0]["event"] for _, f in crm_socket.frames_during(0.2)] == [
        "callRinging", "callTalking", "callDropped"]
    assert [f["item"][0]["state"] for _, f in rcc_socket.frames_during(0.2)] == ["ringing", "talking", "dropped"]
    assert told["reportedBy"] == {"myRCC": ["ringing", "talking", "dropped"],
                                  "myCrm": ["ringing", "talking", "dropped"], "myIstra": ["dropped"]}
    assert sorted(told["reported"]) == sorted(sum(told["reportedBy"].values(), []))


def test_it_does_not_count_a_mycrm_event_lost_on_a_silent_socket_as_told(platform):
    socket = listen_mycrm(logged_in(platform, "myCrm"))
    control(platform, "POST", "faults/mute-pings", json={"silent": True})

    call_id = platform.state.istra.incoming_call(TERMINAL, "0612345678").line_id

    socket.assert_silent(0.3)
    assert line(platform, call_id)["reportedBy"]["myCrm"] == []



def test_it_counts_as_told_only_a_frame_written_before_its_socket_went_silent(platform):
    """The frame is queued, then the path dies before the socket's writer sends it: lost, so not told. Seen once
    in CI: a myCrm ``talking`` queued just before a half-open fault counted as told, and the check expected
    the hub to know the call was answered."""
    import concurrent.futures

    socket = listen_mycrm(logged_in(platform, "myCrm"))
    world = platform.state.istra
    done: concurrent.futures.Future = concurrent.futures.Future()

    def ring_then_die() -> None:  # one loop callback: the writer task cannot run between the two
        done.set_result(world.incoming_call(TERMINAL, "0612345678").line_id)
        world.mute_pings(None, silent=True)

    world.loop.call_soon_threadsafe(ring_then_die)
    call_id = done.result(timeout=5)

    socket.assert_silent(0.3)
    assert line(platform, call_id)["reportedBy"]["myCrm"] == []


def test_it_reports_nothing_to_myistra_for_a_terminal_without_an_owner(platform):
    platform.state.istra.add_extension("42", "142")
    world = platform.state.istra

    call_id = world.incoming_call("42", "0612345678").line_id
    world.hangup(call_id)

    assert line(platform, call_id)["reportedBy"] == {"myRCC": [], "myCrm": [], "myIstra": []}
    assert line(platform, call_id)["reported"] == []


# --- myCrm: calls that move on while no socket is bound -------------------------------------------------

def test_it_sends_only_call_dropped_with_both_durations_for_a_call_answered_while_the_socket_was_down(platform):
    client = logged_in(platform, "myCrm")
    socket = listen_mycrm(client)
    call_id = control(platform, "POST", "calls/incoming",
                      json={"terminalId": TERMINAL, "from": "0612345678"}).json()["callId"]
    ringing = socket.next_item()
    time.sleep(0.06)
    control(platform, "POST", "websockets/drop")
    assert closed_code(socket) is None
    control(platform, "POST", f"calls/{call_id}/answer")  # no socket bound: no callTalking anywhere
    time.sleep(0.06)
    reopened = client.open_socket()  # the listener binding survives the socket

    control(platform, "POST", f"calls/{call_id}/hangup")
    frames = [frame for _, frame in reopened.frames_during(0.4)]

    assert ringing["event"] == "callRinging"
    assert len(frames) == 1 and len(frames[0]["item"]) == 1, frames
    dropped = frames[0]["item"][0]
    assert (dropped["callId"], dropped["event"], dropped["dropCause"]) == (call_id, "callDropped", "disconnect")
    assert int(dropped["ringingTime"]) >= 50 and int(dropped["talkingTime"]) >= 50
    told = line(platform, call_id)
    assert told["history"] == ["ringing", "talking", "dropped"]
    assert told["reportedBy"]["myCrm"] == ["ringing", "dropped"]


@pytest.mark.parametrize("answered", [True, False])
def test_it_sends_nothing_for_a_call_that_ends_while_no_socket_is_bound_and_keeps_it_in_the_history(
        platform, answered):
    client = logged_in(platform, "myCrm")
    socket = listen_mycrm(client)
    control(platform, "POST", "websockets/drop")
    assert closed_code(socket) is None

    call_id = control(platform, "POST", "calls/incoming",
                      json={"terminalId": TERMINAL, "from": "0612345678"}).json()["callId"]
    if answered:
        control(platform, "POST", f"calls/{call_id}/answer")
    control(platform, "POST", f"calls/{call_id}/hangup")
    reopened = client.open_socket()

    reopened.assert_silent(0.4)
    told = line(platform, call_id)
    assert told["reportedBy"] == {"myRCC": [], "myCrm": [], "myIstra": ["dropped"]}
    assert told["reported"] == ["dropped"]
    history = logged_in(platform, "myIstra").get("v1/logs/Phone/bean").json()["items"]
    assert [(h["remoteNumber"], h["isIncoming"], h["isMissed"]) for h in history] == [
        ("0612345678", True, not answered)]


# --- N x 503 then close ---------------------------------------------------------------------------------

def test_it_answers_a_text_body_as_an_html_page_from_in_front_of_istra(platform):
    # A proxy's or the servlet container's page, not Istra's JSON error: what the hub must not take for a refusal.
    client = logged_in(platform, "myCrm")
    control(platform, "POST", "faults/fail-next",
            json={"count": 1, "status": 404, "body": "<html><body>Not Found</body></html>", "path": "GetTerminals"})
    page = client.get("v1/crm/GetTerminals")
    assert (page.status_code, page.headers["Content-Type"].split(";")[0], page.text) == (
        404, "text/html", "<html><body>Not Found</body></html>")
    assert client.get("v1/crm/GetTerminals").status_code == 200  # once only


@pytest.mark.parametrize("app", ["myCrm", "myRCC", "myIstra"])
def test_it_plays_six_503_then_a_close_for_one_app_and_counts_websocket_upgrades(platform, app):
    client = logged_in(platform, app)
    bystander_app = "myIstra" if app != "myIstra" else "myCrm"
    bystander = logged_in(platform, bystander_app)
    socket = client.open_socket()
    control(platform, "POST", "faults/fail-next", json={"count": 6, "status": 503, "app": app})

    control(platform, "POST", "websockets/drop")
    upgrades, answers = [], []
    for _ in range(3):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            client.open_socket()
        upgrades.append(refused.value.status_code)
        answers.append(client.get(APP_PATHS[app]).status_code)
        assert bystander.get(APP_PATHS[bystander_app]).status_code == 200  # another app's calls do not count
    reopened = client.open_socket()

    assert closed_code(socket) is None
    assert upgrades == [503] * 3 and answers == [503] * 3
    assert client.get(APP_PATHS[app]).status_code == 200
    assert reopened.ping()


# --- IPTC down ------------------------------------------------------------------------------------------

IPTC_PATHS = {
    "myCrm": [("GET", "v1/crm/GetTerminals", None, 503),
              ("GET", "v1/crm/CallLine?listenerName=CallLines&terminalId=" + TERMINAL, None, 503),
              ("GET", "v1/crm/PlaceCall?destination=555&terminalId=" + TERMINAL, None, 503),
              ("POST", "v1/service/EventListener/bean", {"name": "CallLines"}, 200)],
    "myRCC": [("GET", "v1/rcc/Extension", None, 503),
              ("GET", "v1/rcc/CallLine", None, 503),
              ("POST", f"v1/rcc/Extension/{TERMINAL}/placeCall", {"destination": "555"}, 503),
              ("POST", "v1/service/EventListener/bean", {"name": "CallLines"}, 200)],
    "myIstra": [("GET", "v1/user/Info", None, 200),
                ("GET", "v1/logs/Phone/bean", None, 200),
                ("GET", "v1/logs/Voicemail/bean", None, 200),
                ("GET", "v1/logs/Notifications/bean", None, 200),
                ("POST", f"v1/user/Terminal/{TERMINAL}/placeCall", {"destination": "555"}, 503)],
}


@pytest.mark.parametrize("app", list(IPTC_PATHS))
def test_it_answers_503_to_telephony_resources_only_while_the_iptc_is_down(platform, app):
    client = logged_in(platform, app)
    control(platform, "POST", "iptc", json={"up": False})

    answers = [(path, client.request(method, path, json=body).status_code) for method, path, body, _ in IPTC_PATHS[app]]
    socket = client.open_socket()

    assert answers == [(path, status) for _, path, _, status in IPTC_PATHS[app]]
    assert socket.ping()  # the websocket still opens
    assert client.post("v1/service/Logout").status_code == 204


# --- lockout after failed logins, permanent redirects ------------------------------------------------

USERS = {"myCrm": "ENDUSER:chatfield", "myRCC": "chatfield|e1", "myIstra": "ENDUSER:chatfield"}


def login_status(sim, app: str, password: str) -> requests.Response:
    """A Login of chatfield's, as each application names the user."""
    return IstraClient(sim.istra_base, app).login(USERS[app], password)


def chatfield(sim) -> dict:
    return next(u for u in control(sim, "GET", "state").json()["users"] if u["login"] == "chatfield")


def test_it_suspends_a_user_after_lockout_after_wrong_passwords_in_a_row_across_the_apps(platform):
    control(platform, "PATCH", "config", json={"lockoutAfter": 3})
    wrong = [login_status(platform, app, "9999") for app in ("myCrm", "myRCC", "myIstra")]
    right = login_status(platform, "myIstra", "0000")

    assert [r.status_code for r in wrong] == [401, 401, 401]
    assert (right.status_code, right.json()) == (401, wrong[0].json())  # suspended: the wrong password's answer
    assert right.json() == {"code": "ROUTER_ERR_401", "message": "authentication failed"}
    assert (chatfield(platform)["failures"], chatfield(platform)["locked"]) == (3, True)
    assert control(platform, "POST", "users/chatfield/unlock").json()["locked"] is False
    assert login_status(platform, "myCrm", "0000").status_code == 200


def test_it_counts_only_wrong_passwords_in_a_row(platform):
    control(platform, "PATCH", "config", json={"lockoutAfter": 2})
    statuses = [login_status(platform, "myCrm", password).status_code for password in ("9999", "0000", "9999")]
    assert chatfield(platform)["failures"] == 1  # the right password in between ended the first run
    assert login_status(platform, "myRCC", "0000").status_code == 200

    assert statuses == [401, 200, 401]
    assert (chatfield(platform)["failures"], chatfield(platform)["locked"]) == (0, False)


def test_it_never_suspends_anyone_unless_configured(platform):
    assert control(platform, "GET", "state").json()["config"]["lockoutAfter"] == 0
    assert {login_status(platform, "myCrm", "9999").status_code for _ in range(10)} == {401}
    assert login_status(platform, "myCrm", "0000").status_code == 200


@pytest.mark.parametrize("value", [-1, "3", True, 1.5])
def test_it_refuses_a_lockout_setting_that_is_not_a_count(platform, value):
    control(platform, "PATCH", "config", expect=400, json={"lockoutAfter": value})


def test_it_redirects_permanently_to_another_name_and_logs_the_host_each_request_used(platform):
    other = f"http://localhost:{platform.port}"
    control(platform, "POST", "faults/redirect-next", json={"count": 1, "status": 301, "baseUrl": other,
                                                            "app": "myRCC"})
    moved = requests.post(f"{platform.istra_base}/v1/service/Login?x=1", headers={"X-Application": "myRCC"},
                          auth=("chatfield|e1", "0000"), allow_redirects=False, timeout=5)
    again = requests.post(moved.headers["Location"], headers={"X-Application": "myRCC"},
                          auth=("chatfield|e1", "0000"), allow_redirects=False, timeout=5)

    assert (moved.status_code, moved.headers["Location"]) == (301, f"{other}/restletrouter/v1/service/Login?x=1")
    assert again.status_code == 200
    log = control(platform, "GET", "requests").json()
    assert [{k.lower(): v for k, v in e["headers"].items()}["host"] for e in log] == \
        [f"127.0.0.1:{platform.port}", f"localhost:{platform.port}"]
