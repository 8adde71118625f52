"""The simulator's vendor-variance switches (``simulator/istra/variance.py``), through the control API."""

from __future__ import annotations

import pytest
import requests

from tests.simulator.istra_client import IstraClient

JOHN, ALICE = "897778778", "4588897"
OFF = {"beanScope": "session", "userBeans": {}, "unpullableLines": {}, "stateNames": {}, "lineStates": {},
       "fieldValues": {}}


@pytest.fixture
def world(sim):
    world = sim.state.istra
    world.add_user("rcc", "secret", enterprise="e1")
    world.add_extension(JOHN, "101", label="John Doe")
    world.add_extension(ALICE, "102", label="Alice White")
    return world


@pytest.fixture
def rcc(sim, world):
    client = IstraClient(sim.istra_base, "myRCC")
    assert client.login("rcc|e1", "secret").status_code == 200
    return client


def control(sim, path: str, body: dict | None = None, method: str = "POST") -> requests.Response:
    return requests.request(method, f"{sim.url}/_sim/istra/faults/{path}", json=body, timeout=5)


def monitor(client: IstraClient):
    socket = client.open_socket()
    assert client.post("v1/service/EventListener/bean", json={"name": "CallLines"}).status_code == 200
    listing = client.get("v1/rcc/CallLine", params={"listenerName": "CallLines"})
    assert listing.status_code == 200, listing.text
    return socket, listing.json()


def test_it_has_every_switch_off_until_a_test_turns_one_on(sim, world):
    assert control(sim, "variance", method="GET").json() == OFF


# --- unpullable lines ------------------------------------------------------------------------------

def test_it_answers_the_chosen_status_for_an_unpullable_line_and_serves_the_others(sim, world, rcc):
    stuck = world.incoming_call(JOHN, "0612345678").line_id
    fine = world.incoming_call(ALICE, "0699999999").line_id

    answer = control(sim, "unpullable-lines", {"lines": [stuck], "status": 500})

    assert answer.status_code == 200 and answer.json() == {stuck: 500}
    refused = rcc.get(f"v1/rcc/CallLine/{stuck}")
    assert (refused.status_code, refused.json()["code"]) == (500, "ROUTER_ERR_500")
    assert rcc.get(f"v1/rcc/CallLine/{fine}").json()["lineId"] == fine
    assert {line["lineId"] for line in rcc.get("v1/rcc/CallLine").json()["results"]} == {stuck, fine}  # still listed


def test_it_answers_404_in_the_routers_shape_and_makes_a_line_pullable_again(sim, world, rcc):
    line = world.incoming_call(JOHN, "0612345678").line_id
    control(sim, "unpullable-lines", {"lines": [line], "status": 404})
    assert (rcc.get(f"v1/rcc/CallLine/{line}").status_code, control(sim, "variance", method="GET").json()[
        "unpullableLines"]) == (404, {line: 404})

    assert control(sim, "unpullable-lines", {"lines": [line], "status": None}).json() == {}
    assert rcc.get(f"v1/rcc/CallLine/{line}").status_code == 200


def test_it_makes_a_line_unpullable_even_once_the_pbx_forgot_it(sim, world, rcc):
    line = world.incoming_call(JOHN, "0612345678").line_id
    world.calls.forget(line)
    assert rcc.get(f"v1/rcc/CallLine/{line}").status_code == 400  # forgotten: "bad call line ID"
    control(sim, "unpullable-lines", {"lines": [line], "status": 503})
    assert rcc.get(f"v1/rcc/CallLine/{line}").status_code == 503


@pytest.mark.parametrize("body", [
    {"lines": "-401", "status": 500}, {"lines": [], "status": 200}, {"lines": ["-401"], "status": "500"},
    {"lines": ["-401"], "colour": "red"}, {"status": 500},
])
def test_it_refuses_a_bad_unpullable_lines_body(sim, world, body):
    assert control(sim, "unpullable-lines", body).status_code == 400


# --- state names -------------------------------------------------------------------------------------

def test_it_pushes_a_line_in_the_state_name_a_test_chose_until_its_state_changes(sim, world, rcc):
    socket, _ = monitor(rcc)
    try:
        line = world.incoming_call(JOHN, "0612345678").line_id
        assert socket.next_item()["state"] == "ringing"

        answer = control(sim, "line-state", {"callId": line, "state": "offering"})

        assert answer.json() == {"callId": line, "state": "ringing", "shown": "offering"}
        pushed = socket.next_item()
        assert (pushed["lineId"], pushed["state"], pushed["isIncoming"]) == (line, "offering", True)
        assert rcc.get(f"v1/rcc/CallLine/{line}").json()["state"] == "offering"
        assert rcc.get("v1/rcc/CallLine").json()["results"][0]["state"] == "offering"
        world.answer(line)
        assert socket.next_item()["state"] == "talking"  # a real change shows the real name again
    finally:
        socket.close()


def test_it_gives_a_named_line_a_new_modification_time_so_the_snapshot_is_new(sim, world, rcc):
    line = world.incoming_call(JOHN, "0612345678").line_id
    world.calls.lines[line].modified_ms -= 5  # the same millisecond must not hide the change
    before = rcc.get(f"v1/rcc/CallLine/{line}").json()["lastModificationTime"]
    control(sim, "line-state", {"callId": line, "state": "offering"})
    assert rcc.get(f"v1/rcc/CallLine/{line}").json()["lastModificationTime"] != before
    assert control(sim, "line-state", {"callId": line, "state": None}).json()["shown"] == "ringing"


def test_it_spells_a_state_another_way_in_every_snapshot_once_renamed(sim, world, rcc):
    assert control(sim, "state-names", {"names": {"ringing": "alerting"}}).json() == {"ringing": "alerting"}
    socket, _ = monitor(rcc)
    try:
        line = world.incoming_call(JOHN, "0612345678").line_id
        assert socket.next_item()["state"] == "alerting"
        world.answer(line)
        assert socket.next_item()["state"] == "talking"
    finally:
        socket.close()
    control(sim, "state-names", {"names": {}})
    assert rcc.get(f"v1/rcc/CallLine/{line}").json()["state"] == "talking"


# --- field values ------------------------------------------------------------------------------------

def test_it_sends_the_field_values_a_test_chose_in_every_snapshot_and_listing(sim, world, rcc):
    chosen = {"creationTime": "2015-01-07T13:03:31Z", "isIncoming": "yes", "actions": [None, "answer"],
              "talkingTime": "-1"}
    assert control(sim, "field-values", {"app": "myRCC", "fields": chosen}).json() == chosen
    socket, _ = monitor(rcc)
    try:
        line = world.incoming_call(JOHN, "0612345678").line_id
        ringing = socket.next_item()
        world.answer(line)
        talking = socket.next_item()
    finally:
        socket.close()
    listed = rcc.get(f"v1/rcc/CallLine/{line}").json()

    for item in (ringing, talking, listed):
        assert {key: item[key] for key in ("creationTime", "isIncoming", "actions")} == {
            key: chosen[key] for key in ("creationTime", "isIncoming", "actions")}
    assert "talkingTime" not in ringing and talking["talkingTime"] == "-1"  # only where the line has it
    assert (ringing["state"], talking["state"]) == ("ringing", "talking")  # the rest is ours
    control(sim, "field-values", {"app": "myRCC", "fields": {}})
    assert rcc.get(f"v1/rcc/CallLine/{line}").json()["creationTime"].isdigit()


def test_it_answers_400_for_field_values_of_an_app_it_does_not_know_or_not_a_map(sim, world):
    assert control(sim, "field-values", {"app": "myIstra", "fields": {"x": 1}}).status_code == 400
    assert control(sim, "field-values", {"app": "myRCC", "fields": ["x"]}).status_code == 400
    assert control(sim, "field-values", {"app": "myRCC", "fields": {"": 1}}).status_code == 400


def test_it_answers_404_for_naming_an_unknown_call_and_400_for_a_bad_name(sim, world):
    assert control(sim, "line-state", {"callId": "-999", "state": "offering"}).status_code == 404
    line = world.incoming_call(JOHN, "0612345678").line_id
    assert control(sim, "line-state", {"callId": line, "state": ""}).status_code == 400
    assert control(sim, "state-names", {"names": {"ringing": 7}}).status_code == 400


def test_it_turns_every_switch_off_on_reset(sim, world):
    line = world.incoming_call(JOHN, "0612345678").line_id
    control(sim, "unpullable-lines", {"lines": [line]})
    control(sim, "state-names", {"names": {"held": "onHold"}})
    control(sim, "line-state", {"callId": line, "state": "offering"})
    control(sim, "bean-scope", {"scope": "user"})
    control(sim, "field-values", {"app": "myRCC", "fields": {"creationTime": "-1"}})
    assert requests.post(f"{sim.url}/_sim/istra/reset", timeout=5).status_code == 200
    assert control(sim, "variance", method="GET").json() == OFF


# --- bean scope --------------------------------------------------------------------------------------

def two_monitoring_sessions(sim, world):
    """Two sessions of the same myRCC user, each with its socket bound to a listener named CallLines."""
    clients = [IstraClient(sim.istra_base, "myRCC") for _ in range(2)]
    sockets = []
    for client in clients:
        assert client.login("rcc|e1", "secret").status_code == 200
        sockets.append(monitor(client)[0])
    return clients, sockets


def test_it_keeps_a_sessions_bean_when_another_session_deletes_the_same_name_by_default(sim, world):
    (old, new), (_, new_socket) = two_monitoring_sessions(sim, world)

    assert old.delete("v1/service/EventListener/bean/CallLines").status_code == 200

    line = world.incoming_call(JOHN, "0612345678").line_id
    assert new_socket.next_item()["lineId"] == line
    assert control(sim, "variance", method="GET").json()["userBeans"] == {}


def test_it_ends_a_user_bean_for_every_session_of_the_user_once_one_deletes_it(sim, world):
    assert control(sim, "bean-scope", {"scope": "user"}).json() == {"scope": "user"}
    (old, new), (_, new_socket) = two_monitoring_sessions(sim, world)
    assert control(sim, "variance", method="GET").json()["userBeans"] == {"myRCC:rcc@e1": ["CallLines"]}

    assert old.delete("v1/service/EventListener/bean/CallLines").status_code == 200

    world.incoming_call(JOHN, "0612345678")
    new_socket.assert_silent(0.5)
    assert new.delete("v1/service/EventListener/bean/CallLines").status_code == 400  # gone for it too
    assert control(sim, "variance", method="GET").json()["userBeans"] == {}


def test_it_keeps_a_user_bean_past_its_session_for_another_session_to_bind(sim, world):
    control(sim, "bean-scope", {"scope": "user"})
    creator = IstraClient(sim.istra_base, "myRCC")
    assert creator.login("rcc|e1", "secret").status_code == 200
    assert creator.post("v1/service/EventListener/bean", json={"name": "CallLines"}).status_code == 200
    assert creator.post("v1/service/Logout").status_code == 204

    other = IstraClient(sim.istra_base, "myRCC")
    assert other.login("rcc|e1", "secret").status_code == 200
    socket = other.open_socket()
    assert other.get("v1/rcc/CallLine", params={"listenerName": "CallLines"}).status_code == 200  # never created here
    line = world.incoming_call(JOHN, "0612345678").line_id
    assert socket.next_item()["lineId"] == line
    assert control(sim, "variance", method="GET").json()["userBeans"] == {"myRCC:rcc@e1": ["CallLines"]}


def test_it_makes_the_beans_sessions_hold_their_users_when_switched_to_user_scope(sim, world):
    (old, new), (_, new_socket) = two_monitoring_sessions(sim, world)

    control(sim, "bean-scope", {"scope": "user"})
    assert control(sim, "variance", method="GET").json()["userBeans"] == {"myRCC:rcc@e1": ["CallLines"]}
    assert old.delete("v1/service/EventListener/bean/CallLines").status_code == 200

    world.incoming_call(JOHN, "0612345678")
    new_socket.assert_silent(0.5)


def test_it_refuses_an_unknown_bean_scope(sim, world):
    answer = control(sim, "bean-scope", {"scope": "enterprise"})
    assert answer.status_code == 400 and "scope" in answer.json()["error"]
