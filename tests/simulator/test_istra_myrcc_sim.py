"""The simulated Istra myRCC API, exercised over real HTTP and websockets like a real client."""

from __future__ import annotations

import gzip
import re
import time

import pytest
import requests

from simulator.istra import push
from tests.simulator.istra_client import IstraClient, SocketClosed

JOHN, ALICE, CAROL = "897778778", "4588897", "9223372036854775001"  # 101, 102, 103
HIDDEN = "5000000000000000001"  # myRCC disabled on it
FOREIGN = "6000000000000000001"  # enterprise e2

SNAPSHOT_KEYS = {
    "restUri", "actions", "creationTime", "displayedExternalNumber", "displayedLabel", "displayedNumber",
    "displayedPhoto", "isIncoming", "isMediaAvailable", "isPlaying", "isRecording", "lastModificationTime",
    "lineId", "state", "stateCause", "talkingTime",
}


@pytest.fixture
def platform(sim):
    """Enterprise e1 (admin rcc, seven visible extensions, one hidden) and e2 (one extension)."""
    world = sim.state.istra  # driven from Python here; the myCrm tests use the HTTP control API
    world.add_user("rcc", "secret", enterprise="e1")
    world.add_user("other", "secret", enterprise="e2")
    world.add_extension(JOHN, "101", label="John Doe", department="Sales", photo="http://jhondoe.pictures.com",
                        pstn_numbers=["+33415369101"])
    world.add_extension(ALICE, "102", label="Alice White", department="HR", pstn_numbers=["+33415369102"])
    world.add_extension(CAROL, "103", label="Carol")
    for n in range(104, 108):
        world.add_extension(f"77{n}", str(n), label=f"User {n}")
    world.add_extension(HIDDEN, "199", label="Not controllable", myrcc=False)
    world.add_extension(FOREIGN, "101", enterprise="e2", label="Elsewhere")
    return sim


@pytest.fixture
def rcc(platform):
    client = IstraClient(platform.istra_base, "myRCC")
    assert client.login("rcc|e1", "secret").status_code == 200
    return client


@pytest.fixture
def world(platform):
    return platform.state.istra


def monitor(client: IstraClient, name: str = "CallLines"):
    """myRCC §4.2: websocket, listener, then GET CallLine?listenerName= to start monitoring."""
    socket = client.open_socket()
    assert client.post("v1/service/EventListener/bean", json={"name": name}).status_code == 200
    listing = client.get("v1/rcc/CallLine", params={"listenerName": name})
    assert listing.status_code == 200, listing.text
    return socket, listing.json()


def talking_call(world, extension: str = JOHN, caller: str = "0612345678") -> str:
    line = world.incoming_call(extension, caller, label="Caller")
    world.answer(line.line_id)
    return line.line_id


def latest_by_line(frames) -> dict[str, dict]:
    latest = {}
    for _, frame in frames:
        for item in frame["item"]:
            latest[item["lineId"]] = item
    return latest


# --- login / logout -------------------------------------------------------------------------------

def test_it_logs_in_as_login_pipe_enterprise_and_answers_cookie_and_token(platform):
    client = IstraClient(platform.istra_base, "myRCC")

    response = client.login("rcc|e1", "secret")

    assert response.status_code == 200
    assert re.fullmatch(r"myRCC_SESSIONID=\d{19};Path=/restletrouter;HttpOnly", response.headers["Set-Cookie"])
    assert re.fullmatch(r"myRCC;[0-9a-f-]{36}", response.headers["X-Application"])


@pytest.mark.parametrize("username, password", [("rcc|e2", "secret"), ("rcc|e1", "nope"), ("rcc", "secret")])
def test_it_refuses_a_foreign_enterprise_a_bad_password_or_a_login_without_enterprise(platform, username, password):
    response = IstraClient(platform.istra_base, "myRCC").login(username, password)

    assert response.status_code == 401
    assert response.json()["code"] == "ROUTER_ERR_401"


def test_it_logs_out_with_204_expires_the_cookie_and_closes_the_websocket(rcc):
    socket = rcc.open_socket()
    session_id = rcc.session_id

    response = rcc.post("v1/service/Logout")

    assert response.status_code == 204
    assert response.headers["Set-Cookie"] == (
        f"myRCC_SESSIONID={session_id};Path=/restletrouter;Expires=Thu, 01-Jan-1970 00:00:00 GMT"
    )
    assert "myRCC_SESSIONID" not in rcc.http.cookies  # the client dropped the expired cookie
    stale = requests.get(rcc.base + "v1/rcc/Extension", headers=rcc.headers(), cookies={"myRCC_SESSIONID": session_id})
    assert stale.status_code == 401
    with pytest.raises(SocketClosed) as closed:
        socket.next_frame(timeout=2)
    assert closed.value.code == 1000


def test_it_keeps_applications_apart_and_rotates_rcc_tokens(rcc, platform):
    crm_only = rcc.get("v1/crm/GetTerminals")
    old_token = rcc.token
    platform.state.istra.rotate_tokens("myRCC")

    rotated = rcc.get("v1/rcc/Extension/" + JOHN)

    assert crm_only.status_code == 403
    assert crm_only.json()["code"] == "ROUTER_ERR_403"
    assert rotated.headers["X-Application"] == f"myRCC;{rcc.token}" != f"myRCC;{old_token}"
    assert rcc.get("v1/rcc/Extension/" + JOHN, headers={"X-Application": f"myRCC;{old_token}"}).status_code == 403


# --- extensions ----------------------------------------------------------------------------------

def test_it_pages_the_extension_list_and_the_last_page_has_no_next(rcc):
    pages, path = [], "v1/rcc/Extension?offset=0&length=3"
    while path:
        response = rcc.get(path)
        assert response.status_code == 200
        pages.append(response.json())
        path = pages[-1].get("next")

    assert [len(p["items"]) for p in pages] == [3, 3, 1]
    assert {p["count"] for p in pages} == {7}  # the hidden and the other enterprise's are not listed
    assert [p.get("next") for p in pages] == [
        "v1/rcc/Extension?offset=3&length=3", "v1/rcc/Extension?offset=6&length=3", None,
    ]
    assert [p.get("prev") for p in pages] == [
        None, "v1/rcc/Extension?offset=0&length=3", "v1/rcc/Extension?offset=3&length=3",
    ]
    assert pages[0]["items"][0] == {
        "addressNumber": "101", "restUri": f"v1/rcc/Extension/{JOHN}", "displayName": "John Doe",
        "department": "Sales", "urlPhoto": "http://jhondoe.pictures.com", "pstnNumbers": ["+33415369101"],
    }
    numbers = [item["addressNumber"] for page in pages for item in page["items"]]
    assert numbers == ["101", "102", "103", "104", "105", "106", "107"]


def test_it_lists_up_to_50_extensions_without_paging_parameters_and_refuses_bad_ones(rcc):
    everything = rcc.get("v1/rcc/Extension").json()
    bad = rcc.get("v1/rcc/Extension", params={"offset": "-1"})

    assert (everything["count"], len(everything["items"])) == (7, 7)
    assert "next" not in everything and "prev" not in everything
    assert bad.status_code == 400 and bad.json()["code"] == "ERR_0"


def test_it_returns_one_extension_and_400_err_0_for_an_unknown_or_foreign_one(rcc):
    found = rcc.get(f"v1/rcc/Extension/{CAROL}")
    unknown = rcc.get("v1/rcc/Extension/1")
    foreign = rcc.get(f"v1/rcc/Extension/{FOREIGN}")

    assert found.json()["restUri"] == f"v1/rcc/Extension/{CAROL}"
    assert f'"v1/rcc/Extension/{CAROL}"' in found.text  # 64-bit id, never a float
    assert (unknown.status_code, foreign.status_code) == (400, 400)
    assert foreign.json()["message"] == "bad extension ID"


# --- placeCall and snapshots ----------------------------------------------------------------------

def test_it_places_a_call_and_answers_the_prompting_line_as_the_doc_shows(rcc):
    response = rcc.post(f"v1/rcc/Extension/{JOHN}/placeCall", json={"destination": "102"})

    assert response.status_code == 200
    line = response.json()
    assert list(line) == [
        "restUri", "actions", "creationTime", "displayedLabel", "displayedNumber", "displayedPhoto", "isIncoming",
        "isMediaAvailable", "isPlaying", "isRecording", "lineId", "state", "extensionURI",
    ]
    assert line["restUri"] == f"v1/rcc/CallLine/{line['lineId']}"
    assert (line["state"], line["actions"], line["isIncoming"]) == ("prompting", ["disconnect", "answer"], False)
    assert (line["displayedNumber"], line["displayedLabel"]) == ("102", "Alice White")
    assert line["extensionURI"] == f"v1/rcc/Extension/{JOHN}"
    assert re.fullmatch(r"\d{13}", line["creationTime"]) and re.fullmatch(r"-\d+", line["lineId"])


def test_it_refuses_place_call_on_an_out_of_service_extension_or_without_destination(rcc, world):
    no_destination = rcc.post(f"v1/rcc/Extension/{JOHN}/placeCall", json={})
    world.update_extension(JOHN, out_of_service=True)
    out_of_service = rcc.post(f"v1/rcc/Extension/{JOHN}/placeCall", json={"destination": "102"})

    assert no_destination.status_code == 400
    assert out_of_service.status_code == 512
    assert out_of_service.json()["code"] == "ERR_100"


def test_it_pushes_full_snapshots_of_a_placed_call_through_to_talking(rcc, world):
    socket, listing = monitor(rcc)
    assert listing == {"count": 0, "results": []}

    placed = rcc.post(f"v1/rcc/Extension/{JOHN}/placeCall", json={"destination": "102"}).json()
    world.answer(placed["lineId"])  # John's phone goes off-hook: 102 rings
    callee = next(l for l in world.calls.live_lines(ALICE))
    world.answer(callee.line_id)  # Alice answers
    frames = socket.frames_during(0.35)

    latest = latest_by_line(frames)
    caller_item, callee_item = latest[placed["lineId"]], latest[callee.line_id]
    assert all(f["listenerName"] == "CallLines" for _, f in frames)
    assert set(caller_item) == SNAPSHOT_KEYS | {"uriExtension"}
    assert (caller_item["state"], caller_item["isIncoming"]) == ("talking", False)
    assert caller_item["actions"] == ["addParty", "disconnect", "hold", "leave", "redirect", "sendDtmfs"]
    assert caller_item["uriExtension"] == f"v1/rcc/Extension/{JOHN}"
    assert caller_item["displayedExternalNumber"] == "+33415369102"
    assert (callee_item["state"], callee_item["isIncoming"], callee_item["displayedNumber"]) == ("talking", True, "101")
    results = rcc.get("v1/rcc/CallLine").json()
    assert results["count"] == 2
    pulled = next(r for r in results["results"] if r["lineId"] == placed["lineId"])
    assert pulled.pop("extension") == caller_item.pop("uriExtension")
    assert pulled == caller_item  # the pushed snapshot is the full state: the same as a pull


def test_it_coalesces_snapshots_to_at_most_one_per_line_every_100_ms(rcc, world, monkeypatch):
    line_id = talking_call(world)
    socket, listing = monitor(rcc)
    assert [r["state"] for r in listing["results"]] == ["talking"]
    # The pace is the simulator's: timed where it sends (a flush), not where this test reads. On a busy machine
    # the reading thread may take two frames sent 100 ms apart one right after the other.
    flushed = []
    flush = push.Coalescer.flush

    def timed_flush(coalescer):
        if line_id in coalescer._dirty:
            flushed.append(time.monotonic())
        flush(coalescer)

    monkeypatch.setattr(push.Coalescer, "flush", timed_flush)

    for action in ("hold", "unhold", "hold", "unhold", "hold"):
        assert rcc.post(f"v1/rcc/CallLine/{line_id}/{action}").status_code == 204
    frames = socket.frames_during(0.5)

    arrivals = [t for t, f in frames if f["item"][0]["lineId"] == line_id]
    assert 1 <= len(arrivals) < 5  # intermediate states were skipped
    assert len(flushed) == len(arrivals)
    assert all(later - earlier >= 0.099 for earlier, later in zip(flushed, flushed[1:]))
    assert frames[-1][1]["item"][0]["state"] == "held"  # the latest state always arrives
    assert world.call(line_id).history[-5:] == ["held", "talking", "held", "talking", "held"]


def test_it_stops_pushing_once_the_listener_is_deleted(rcc, world):
    socket, _ = monitor(rcc)
    assert rcc.delete("v1/service/EventListener/bean/CallLines").status_code == 200

    world.incoming_call(JOHN, "0612345678")

    socket.assert_silent(0.25)


def test_it_pushes_only_the_lines_of_the_sessions_enterprise(rcc, world):
    socket, _ = monitor(rcc)

    world.incoming_call(FOREIGN, "0612345678")
    world.incoming_call(HIDDEN, "0612345678")
    mine = world.incoming_call(CAROL, "0612345678")

    frames = socket.frames_during(0.25)
    assert {f["item"][0]["lineId"] for _, f in frames} == {mine.line_id}


# --- call-line actions ------------------------------------------------------------------------------

def _two_lines(world) -> tuple[str, str]:
    """John has a held call (first) and a talking one (second): transfer and merge are offered."""
    first = talking_call(world, caller="0611111111")
    world.hold(first)
    second = talking_call(world, caller="0622222222")
    return second, first


def _case_answer(world):
    line = world.incoming_call(JOHN, "0612345678").line_id
    return line, {}, lambda w, l, o: _assert_state(w, l, "talking")


def _case_disconnect(world):
    return talking_call(world), {}, lambda w, l, o: _assert_state(w, l, "dropped", "disconnect")


def _case_hold(world):
    return talking_call(world), {}, lambda w, l, o: _assert_state(w, l, "held")


def _case_unhold(world):
    line = talking_call(world)
    world.hold(line)
    return line, {}, lambda w, l, o: _assert_state(w, l, "talking")


def _case_leave(world):
    return talking_call(world), {}, lambda w, l, o: _assert_state(w, l, "dropped", "disconnect")


def _case_redirect(world):
    line = world.incoming_call(JOHN, "0612345678").line_id

    def check(w, l, o):
        _assert_state(w, l, "dropped", "transferred")
        [new_line] = w.calls.live_lines(CAROL)
        assert (new_line.state, new_line.incoming, new_line.remote.number) == ("ringing", True, "0612345678")

    return line, {"destination": "103"}, check


def _case_send_dtmfs(world):
    def check(w, l, o):
        _assert_state(w, l, "talking")
        assert w.call(l).dtmfs == ["12#"]

    return talking_call(world), {"dtmfs": "12#"}, check


def _case_add_party(world):
    def check(w, l, o):
        assert [p.number for p in w.call(l).parties] == ["0699999999"]

    return talking_call(world), {"destination": "0699999999"}, check


def _case_merge(world):
    line, other = _two_lines(world)

    def check(w, l, o):
        _assert_state(w, l, "talking")
        _assert_state(w, o, "dropped", "transferred")
        assert [p.number for p in w.call(l).parties] == ["0611111111"]

    return line, {"line": f"v1/rcc/CallLine/{other}"}, check


def _case_transfer(world):
    line, other = _two_lines(world)

    def check(w, l, o):
        _assert_state(w, l, "dropped", "transferred")
        _assert_state(w, o, "dropped", "transferred")

    return line, {"line": f"v1/rcc/CallLine/{other}"}, check


def _assert_state(world, line_id: str, state: str, drop_cause: str | None = None) -> None:
    line = world.call(line_id)
    assert (line.state, line.drop_cause) == (state, drop_cause)


ACTION_CASES = {
    "addParty": _case_add_party, "answer": _case_answer, "disconnect": _case_disconnect, "hold": _case_hold,
    "unhold": _case_unhold, "leave": _case_leave, "merge": _case_merge, "redirect": _case_redirect,
    "sendDtmfs": _case_send_dtmfs, "transfer": _case_transfer,
}


@pytest.mark.parametrize("action", sorted(ACTION_CASES))
def test_it_performs_each_of_the_ten_call_line_actions(rcc, world, action):
    line_id, payload, check = ACTION_CASES[action](world)
    offered = rcc.get(f"v1/rcc/CallLine/{line_id}").json()["actions"]
    other = payload.get("line", "").rsplit("/", 1)[-1] or None

    response = rcc.post(f"v1/rcc/CallLine/{line_id}/{action}", json=payload)

    assert action in offered
    assert response.status_code == 204, response.text
    assert response.content == b""
    check(world, line_id, other)


def test_it_refuses_an_action_missing_from_the_lines_actions(rcc, world):
    ringing = world.incoming_call(JOHN, "0612345678").line_id

    refused = rcc.post(f"v1/rcc/CallLine/{ringing}/hold")
    unknown = rcc.post(f"v1/rcc/CallLine/{ringing}/startRecord")
    no_payload = rcc.post(f"v1/rcc/CallLine/{ringing}/redirect", json={})
    no_line = rcc.post("v1/rcc/CallLine/-1/answer")

    assert refused.status_code == 400
    body = refused.json()
    assert body["code"] == "ERR_0"
    assert body["info"]["type"] == {"id": "ERR_0", "msg": "Bad Request"}
    assert body["message"] == f"action hold not allowed on call line {ringing} in state ringing"
    assert world.call(ringing).state == "ringing"
    assert [r.status_code for r in (unknown, no_payload, no_line)] == [400, 400, 400]


# --- transport ------------------------------------------------------------------------------------

def test_it_redirects_the_next_requests_with_302_to_the_same_absolute_url(rcc, world, platform):
    world.redirect_next(2, app="myRCC")

    followed = rcc.get("v1/rcc/Extension?offset=0&length=2")
    world.redirect_next(1, path="/placeCall")
    redirected_post = rcc.post(f"v1/rcc/Extension/{JOHN}/placeCall", json={"destination": "555"},
                               allow_redirects=False)
    reposted = rcc.http.post(redirected_post.headers["Location"], headers=rcc.headers(), json={"destination": "555"})

    assert followed.status_code == 200 and followed.json()["count"] == 7
    assert [r.status_code for r in followed.history] == [302, 302]
    expected = f"{platform.url}/restletrouter/v1/rcc/Extension?offset=0&length=2"
    assert [r.headers["Location"] for r in followed.history] == [expected, expected]
    assert redirected_post.status_code == 302
    assert redirected_post.headers["Location"] == f"{platform.url}/restletrouter/v1/rcc/Extension/{JOHN}/placeCall"
    assert reposted.status_code == 200 and reposted.json()["state"] == "prompting"
    statuses = [(e["method"], e["status"]) for e in world.requests_received()[-5:]]
    assert statuses == [("GET", 302), ("GET", 302), ("GET", 200), ("POST", 302), ("POST", 200)]


def test_it_gzips_the_extension_list_when_asked(rcc):
    zipped = rcc.get("v1/rcc/Extension", headers={"Accept-Encoding": "gzip"}, stream=True)
    plain = rcc.get("v1/rcc/Extension", headers={"Accept-Encoding": "identity"})

    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.raw.read(decode_content=False)) == plain.content


def test_it_records_the_exact_place_call_request(rcc, world):
    world.clear_requests()

    rcc.post(f"v1/rcc/Extension/{JOHN}/placeCall", data='{"destination":"102"}')

    [entry] = world.requests_received()
    assert (entry["method"], entry["path"], entry["body"]) == (
        "POST", f"/restletrouter/v1/rcc/Extension/{JOHN}/placeCall", '{"destination":"102"}',
    )
    assert entry["headers"]["X-Application"] == f"myRCC;{rcc.token}"
    assert entry["headers"]["Cookie"] == f"myRCC_SESSIONID={rcc.session_id}"
    assert entry["headers"]["Accept"] == "application/json"
