"""The simulated Istra End User API (myIstra), exercised over real HTTP and websockets like a real client."""

from __future__ import annotations

import base64
import gzip
import json
import re
import struct
import time
import zlib

import pytest
import requests
import websocket

from simulator.istra.myistra import _ogg_crc, ogg_opus_silence
from tests.simulator.istra_client import IstraClient, SocketClosed

TERMINAL = "5985841581756135023"
SOFTPHONE = "5985841581756135024"
BOBS = "7000000000000000001"


def control(sim, method: str, path: str, **kwargs) -> requests.Response:
    response = requests.request(method, f"{sim.url}/_sim/istra/{path}", timeout=5, **kwargs)
    assert response.status_code < 300, response.text
    return response


@pytest.fixture
def platform(sim):
    for user in ({"login": "chatfield", "password": "0000", "enterprise": "acme"},
                 {"login": "bob", "password": "1111", "enterprise": "acme"}):
        control(sim, "POST", "users", json=user)
    for extension in ({"id": TERMINAL, "number": "144", "label": "Chatfield desk", "owner": "chatfield",
                       "enterprise": "acme"},
                      {"id": SOFTPHONE, "number": "145", "label": "Chatfield soft", "owner": "chatfield",
                       "enterprise": "acme"},
                      {"id": BOBS, "number": "146", "label": "Bob", "owner": "bob", "enterprise": "acme"}):
        control(sim, "POST", "extensions", json=extension)
    return sim


@pytest.fixture
def istra(platform):
    client = IstraClient(platform.istra_base, "myIstra")
    assert client.login("ENDUSER:chatfield", "0000").status_code == 200
    return client


def leave_voicemail(sim, **body) -> dict:
    return control(sim, "POST", "enduser/voicemails", json={"login": "chatfield", "from": "0612345678", **body}).json()


def add_history(sim, **body) -> dict:
    return control(sim, "POST", "enduser/history", json={"login": "chatfield", "remoteNumber": "0612345678",
                                                          **body}).json()


def user_id(istra) -> str:
    return istra.get("v1/user/Info").json()["user"]["restUri"].rsplit("/", 1)[1]


# --- session: login, CSRF token, rotation, expiry, gzip ----------------------------------------------

def test_it_logs_in_an_end_user_and_answers_the_myistra_cookie_and_csrf_token(platform):
    response = requests.post(platform.istra_base + "/v1/service/Login", headers={
        "X-Application": "myIstra", "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(b"ENDUSER:chatfield:0000").decode(),
    })
    assert response.status_code == 200
    assert re.fullmatch(r"myIstra_SESSIONID=\d{19};Path=/restletrouter;HttpOnly", response.headers["Set-Cookie"])
    assert re.fullmatch(r"myIstra;[0-9a-f-]{36}", response.headers["X-Application"])


@pytest.mark.parametrize("username, password", [("ENDUSER:chatfield", "9999"), ("chatfield", "0000"),
                                                ("ENDUSER:nobody", "0000")])
def test_it_refuses_bad_credentials_with_401_and_the_error_json(platform, username, password):
    response = IstraClient(platform.istra_base, "myIstra").login(username, password)
    assert response.status_code == 401
    assert set(response.json()) == {"code", "message"}


def test_it_enforces_the_csrf_token_on_every_request_after_login(istra):
    without = istra.get("v1/user/Info", headers={"X-Application": "myIstra"})
    wrong = istra.get("v1/user/Info", headers={"X-Application": "myIstra;f26d2c6e-cd90-4871-8bf9-f30fb9e63d85"})
    for response in (without, wrong):
        assert response.status_code == 403
        assert response.json()["code"] == "ROUTER_ERR_400"
    assert istra.get("v1/user/Info").status_code == 200


def test_it_rotates_the_token_on_an_ordinary_answer_and_refuses_the_old_one(istra, platform):
    old = istra.token
    control(platform, "POST", "sessions/rotate-token", json={"app": "myIstra"})
    response = istra.get("v1/logs/Voicemail/bean")
    assert response.headers["X-Application"] == f"myIstra;{istra.token}" and istra.token != old
    stale = requests.get(istra.base + "v1/logs/Voicemail/bean", headers={"X-Application": f"myIstra;{old}"},
                         cookies={"myIstra_SESSIONID": istra.session_id})
    assert stale.status_code == 403
    assert istra.get("v1/logs/Voicemail/bean").status_code == 200


def test_it_expires_a_session_after_the_inactivity_timeout_and_keeps_an_active_one(istra, platform):
    control(platform, "PATCH", "config", json={"sessionTimeout": 0.6})
    for _ in range(3):  # each request is activity
        time.sleep(0.3)
        assert istra.get("v1/user/Info").status_code == 200
    time.sleep(0.8)
    expired = istra.get("v1/user/Info")
    assert expired.status_code == 401 and expired.json()["code"] == "ROUTER_ERR_401"


def test_it_defaults_to_the_docs_30_minute_expiry(platform):
    assert control(platform, "GET", "state").json()["config"]["sessionTimeout"] == 1800.0


def test_it_gzips_answers_for_clients_that_accept_it(istra, platform):
    leave_voicemail(platform)
    raw = istra.http.get(istra.base + "v1/logs/Voicemail/bean", stream=True,
                         headers={**istra.headers(), "Accept-Encoding": "gzip,deflate"})
    assert raw.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw.raw.read()))["count"] == 1


def test_it_keeps_a_myistra_session_out_of_mycrm_resources_and_the_other_way_round(istra, platform):
    assert istra.get("v1/crm/GetTerminals").status_code == 403
    crm = IstraClient(platform.istra_base, "myCrm")
    crm.login("ENDUSER:chatfield", "0000")
    assert crm.get("v1/logs/Voicemail/bean").status_code == 403


# --- user info, terminals, placeCall --------------------------------------------------------------------

def test_it_describes_the_user_and_their_terminals_with_string_ids(istra):
    info = istra.get("v1/user/Info").json()
    assert info["userName"] == "Chatfield desk" and info["ent"]["fullName"] == "acme"
    assert [(t["abstractTerminalID"], t["label"]) for t in info["terminals"]] == [
        (TERMINAL, "Chatfield desk"), (SOFTPHONE, "Chatfield soft")]
    assert re.fullmatch(r"v1/user/IUser/\d{19}", info["user"]["restUri"])
    assert info["user"]["customCallerIDChoice"] == "FromPresenceState"


def test_it_places_a_call_from_the_users_terminal_only(istra, platform):
    assert istra.post(f"v1/user/Terminal/{TERMINAL}/placeCall", json={"destination": "200"}).status_code == 200
    [line] = control(platform, "GET", "calls").json()
    assert (line["terminalId"], line["state"], line["destination"]) == (TERMINAL, "prompting", "200")
    assert istra.post(f"v1/user/Terminal/{BOBS}/placeCall", json={"destination": "200"}).status_code == 404
    assert istra.post(f"v1/user/Terminal/{TERMINAL}/placeCall", json={}).json()["code"] == "ERR_0"


# --- voicemail ----------------------------------------------------------------------------------------------

def test_it_lists_voicemails_newest_first_in_pages_counting_the_page(istra, platform):
    for n in range(3):
        leave_voicemail(platform, **{"from": f"061234567{n}", "timestamp": 1_700_000_000 + n})
    first = istra.get("v1/logs/Voicemail/bean", params={"offset": 0, "length": 2}).json()
    second = istra.get("v1/logs/Voicemail/bean", params={"offset": 2, "length": 2}).json()
    assert (first["count"], second["count"]) == (2, 1)
    assert [v["remoteNumber"] for v in first["items"] + second["items"]] == ["0612345672", "0612345671", "0612345670"]
    assert istra.get("v1/logs/Voicemail/bean", params={"offset": "-1"}).status_code == 400


def test_it_caps_every_page_at_the_configured_length_whatever_is_asked(istra, platform):
    for n in range(5):
        leave_voicemail(platform, **{"from": f"061234567{n}", "timestamp": 1_700_000_000 + n})
    assert control(platform, "PATCH", "config", json={"maxPageLength": 2}).json()["maxPageLength"] == 2
    page = istra.get("v1/logs/Voicemail/bean", params={"offset": 0, "length": 50}).json()
    rest = istra.get("v1/logs/Voicemail/bean", params={"offset": 4, "length": 50}).json()
    assert ([v["remoteNumber"] for v in page["items"]], page["count"], rest["count"]) == (
        ["0612345674", "0612345673"], 2, 1)
    control(platform, "PATCH", "config", json={"maxPageLength": 0})  # off: as many as asked
    assert istra.get("v1/logs/Voicemail/bean", params={"offset": 0, "length": 50}).json()["count"] == 5


def test_it_gives_each_voicemail_the_docs_keys_and_a_play_number(istra, platform):
    left = leave_voicemail(platform, label="Smith", durationSecond=9, timestamp=1455901725)
    assert set(left) == {"msgid", "filename", "id", "restUri", "playNumber", "timestamp", "durationSecond",
                         "remoteNumber", "restUriContact", "remoteLabel", "type", "priority", "read",
                         "callbackNumber"}
    assert left["playNumber"] == f"555;lra=144;cd msgid={left['msgid']}"
    assert left["msgid"].startswith("20160219170845")
    assert (left["timestamp"], left["type"], left["read"]) == ("1455901725", "external", False)
    assert istra.get(f"v1/logs/Voicemail/bean/{left['id']}").json() == left


def test_it_marks_read_which_renames_the_file_and_deletes_for_good(istra, platform):
    left = leave_voicemail(platform)
    read = istra.request("PUT", f"v1/logs/Voicemail/bean/{left['id']}", json={"read": True}).json()
    assert read["read"] is True and read["filename"] != left["filename"]
    assert istra.request("PUT", f"v1/logs/Voicemail/bean/{left['id']}", json={"read": "yes"}).status_code == 400
    assert istra.delete(f"v1/logs/Voicemail/bean/{left['id']}").status_code == 200
    assert istra.get(f"v1/logs/Voicemail/bean/{left['id']}").status_code == 404
    assert istra.get(f"v1/logs/Voicemail/bean/{left['id']}.ogg").status_code == 404


@pytest.mark.parametrize("fmt, content_type", [("ogg", "application/ogg"), ("aac", "application/mp4"),
                                               ("mp4", "application/mp4"), ("au", "application/au")])
def test_it_serves_the_audio_in_each_documented_format(istra, platform, fmt, content_type):
    left = leave_voicemail(platform, durationSecond=2)
    audio = istra.get(f"v1/logs/Voicemail/bean/{left['id']}.{fmt}")
    assert audio.status_code == 200 and audio.headers["Content-Type"] == content_type
    assert "Content-Disposition" not in audio.headers
    download = istra.get(f"v1/logs/Voicemail/bean/{left['id']}.{fmt}", params={"dl": "true"})
    assert download.headers["Content-Disposition"].startswith("attachment;")


def test_it_serves_real_au_and_ogg_opus_audio_of_the_voicemails_length(istra, platform):
    left = leave_voicemail(platform, durationSecond=2)
    au = istra.get(f"v1/logs/Voicemail/bean/{left['id']}.au").content
    magic, offset, size, encoding, rate, channels = struct.unpack(">4sIIIII", au[:24])
    assert (magic, offset, encoding, rate, channels, size) == (b".snd", 24, 1, 8000, 1, 16000)
    ogg = istra.get(f"v1/logs/Voicemail/bean/{left['id']}.ogg").content
    assert ogg == ogg_opus_silence(2)
    pages = ogg.split(b"OggS")[1:]
    # 23 header bytes after "OggS", one lacing byte, then the packet
    assert pages[0][24:32] == b"OpusHead" and pages[1][24:32] == b"OpusTags"
    last = b"OggS" + pages[-1]
    assert last[5] == 0x04  # end of stream
    granule = struct.unpack("<q", last[6:14])[0]
    assert (granule - 312) / 48000 == 2.0
    zeroed = last[:22] + b"\0\0\0\0" + last[26:]
    assert struct.unpack("<I", last[22:26])[0] == _ogg_crc(zeroed)  # a decoder drops pages with a bad CRC
    assert _ogg_crc(b"OggS") != zlib.crc32(b"OggS")  # Ogg's CRC is not zlib's (no reflection, no final xor)


def test_it_refuses_an_unknown_audio_format(istra, platform):
    left = leave_voicemail(platform)
    assert istra.get(f"v1/logs/Voicemail/bean/{left['id']}.wav").status_code == 400


def test_it_never_shows_one_users_voicemail_to_another(istra, platform):
    left = leave_voicemail(platform)
    bob = IstraClient(platform.istra_base, "myIstra")
    bob.login("ENDUSER:bob", "1111")
    assert bob.get("v1/logs/Voicemail/bean").json() == {"count": 0, "items": []}
    assert bob.get(f"v1/logs/Voicemail/bean/{left['id']}.ogg").status_code == 404


# --- call history -------------------------------------------------------------------------------------------

def test_it_filters_the_call_history_by_incoming_and_missed(istra, platform):
    add_history(platform, remoteNumber="0611111111", isIncoming=True, isMissed=True, timestamp=1_700_000_300)
    add_history(platform, remoteNumber="0622222222", isIncoming=True, isMissed=False, timestamp=1_700_000_200)
    add_history(platform, remoteNumber="0633333333", isIncoming=False, isMissed=False, timestamp=1_700_000_100)

    def numbers(**params):
        return [h["remoteNumber"] for h in istra.get("v1/logs/Phone/bean", params=params).json()["items"]]

    assert numbers() == ["0611111111", "0622222222", "0633333333"]
    assert numbers(isIncoming="true") == ["0611111111", "0622222222"]
    assert numbers(isMissed="true") == ["0611111111"]
    assert numbers(offset=1, length=1) == ["0622222222"]
    assert istra.get("v1/logs/Phone/bean", params={"isMissed": "yes"}).status_code == 400


def test_it_writes_a_dropped_call_into_the_users_history(istra, platform):
    line = control(platform, "POST", "calls/incoming", json={"terminalId": TERMINAL, "from": "0612345678"}).json()
    control(platform, "POST", f"calls/{line['callId']}/answer")
    control(platform, "POST", f"calls/{line['callId']}/hangup", json={"cause": "disconnect"})
    [entry] = istra.get("v1/logs/Phone/bean").json()["items"]
    assert control(platform, "GET", f"calls/{line['callId']}").json()["historyIds"] == \
        {"chatfield": entry["callHistoryId"]}
    assert (entry["isIncoming"], entry["isMissed"], entry["remoteNumber"], entry["userNumber"]) == \
        (True, False, "0612345678", "144")
    assert re.fullmatch(r"\d{19}", entry["callHistoryId"]) and entry["restUri"].endswith(entry["callHistoryId"])
    assert istra.get(f"v1/logs/Phone/bean/{entry['callHistoryId']}").json() == entry
    assert istra.delete(f"v1/logs/Phone/bean/{entry['callHistoryId']}").status_code == 200
    assert istra.get("v1/logs/Phone/bean").json()["count"] == 0


# --- caller-ID ------------------------------------------------------------------------------------------------

def test_it_reads_and_sets_the_caller_id_as_the_doc_shows(istra, platform):
    uid = user_id(istra)
    path = f"v1/user/IUser/{uid}?rt=customCallerIDChoice,customCallerID"
    assert istra.get(path).json() == {"restUri": f"v1/user/IUser/{uid}", "customCallerIDChoice": "FromPresenceState",
                                      "customCallerID": ""}
    body = {"customCallerIDChoice": "ManualSetting", "manualCustomCallerID": "+33489879144"}
    assert istra.request("PUT", path, json=body).json() == {**body, "restUri": f"v1/user/IUser/{uid}"}
    assert istra.get(path).json()["customCallerID"] == "+33489879144"


@pytest.mark.parametrize("body", [{"customCallerIDChoice": "ManualSetting", "manualCustomCallerID": "0489879144"},
                                  {"customCallerIDChoice": "Whatever"}])
def test_it_refuses_a_caller_id_that_is_not_e164_or_not_a_choice(istra, body):
    response = istra.request("PUT", f"v1/user/IUser/{user_id(istra)}", json=body)
    assert response.status_code == 400 and response.json()["code"] == "ERR_0"


def test_it_applies_the_custom_caller_id_policy(istra, platform):
    control(platform, "PATCH", "enduser/chatfield", json={"allowedCallerIds": ["+33412345670"]})
    refused = istra.request("PUT", f"v1/user/IUser/{user_id(istra)}",
                            json={"customCallerIDChoice": "ManualSetting", "manualCustomCallerID": "+33499999999"})
    assert refused.status_code == 400 and refused.json()["code"] == "ERR_CLI"


def test_it_hides_another_users_caller_id(istra, platform):
    bob = IstraClient(platform.istra_base, "myIstra")
    bob.login("ENDUSER:bob", "1111")
    assert bob.get(f"v1/user/IUser/{user_id(istra)}").status_code == 404


# --- websocket, listener, counters ----------------------------------------------------------------------------

def subscribe(istra, name="MixedLogsL"):
    socket = istra.open_socket()
    created = istra.post("v1/service/EventListener/bean", json={"name": name})
    assert created.json() == {"name": name, "restUri": f"v1/service/EventListener/bean/{name}"}
    snapshot = istra.get("v1/logs/Notifications/bean", params={"listenerName": name})
    assert snapshot.status_code == 200
    return socket, snapshot.json()


def test_it_answers_the_counters_snapshot_and_pushes_each_change(istra, platform):
    socket, snapshot = subscribe(istra)
    assert snapshot == {"model": "v1/data/RestletApiSessionCounters", "unreadMissedCalls": 0,
                        "unreadTextMessages": 0, "unreadVoiceMails": 0}
    left = leave_voicemail(platform)
    assert socket.next_frame() == {"listenerName": "MixedLogsL", "item": {
        "model": "v1/data/RestletApiSessionCounters", "unreadMissedCalls": 0, "unreadTextMessages": 0,
        "unreadVoiceMails": 1}}
    add_history(platform, isIncoming=True, isMissed=True)
    assert socket.next_frame()["item"]["unreadMissedCalls"] == 1
    istra.request("PUT", f"v1/logs/Voicemail/bean/{left['id']}", json={"read": True})
    assert socket.next_frame()["item"]["unreadVoiceMails"] == 0
    control(platform, "PATCH", "enduser/chatfield", json={"unreadTextMessages": 2, "seeMissedCalls": True})
    assert socket.next_frame()["item"] == {"model": "v1/data/RestletApiSessionCounters", "unreadMissedCalls": 0,
                                           "unreadTextMessages": 2, "unreadVoiceMails": 0}
    socket.close()


def test_it_pushes_nothing_without_a_bound_listener_or_after_it_is_deleted(istra, platform):
    socket = istra.open_socket()
    leave_voicemail(platform)
    socket.assert_silent()
    istra.post("v1/service/EventListener/bean", json={"name": "MixedLogsL"})
    istra.get("v1/logs/Notifications/bean", params={"listenerName": "MixedLogsL"})
    istra.delete("v1/service/EventListener/bean/MixedLogsL")
    leave_voicemail(platform)
    socket.assert_silent()
    assert istra.get("v1/logs/Notifications/bean", params={"listenerName": "nope"}).status_code == 400


def test_it_does_not_push_one_users_counters_to_another(istra, platform):
    bob = IstraClient(platform.istra_base, "myIstra")
    bob.login("ENDUSER:bob", "1111")
    bobs_socket, _ = subscribe(bob)
    leave_voicemail(platform)
    bobs_socket.assert_silent()


def test_it_opens_the_websocket_without_the_csrf_token_but_not_without_the_cookie(istra, platform):
    url = istra.base.replace("http://", "ws://") + "ws-service/myIstra"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, timeout=3)
    assert refused.value.status_code == 401
    socket = istra.open_socket()  # cookie only, as the doc allows
    socket.close()


def test_it_keeps_the_session_alive_on_keepalive_frames_and_closes_the_socket_on_expiry(istra, platform):
    socket, _ = subscribe(istra)
    control(platform, "PATCH", "config", json={"sessionTimeout": 0.6})
    for _ in range(4):
        socket.ws.send(json.dumps({"keepalive": "true"}))
        time.sleep(0.25)
    assert istra.get("v1/user/Info").status_code == 200  # still alive after 1 s thanks to the frames
    with pytest.raises(SocketClosed) as closed:
        socket.next_frame(timeout=3)
    assert closed.value.code == 1008
