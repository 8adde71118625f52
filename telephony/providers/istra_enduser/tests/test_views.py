"""The console's voicemail endpoints, through Django, against the simulated PBX."""

from __future__ import annotations

import pytest
import requests
from django.test import Client

from telephony import control
from telephony.models import PbxAccount
from tests.factories import make_account, make_agent, make_terminal

pytestmark = pytest.mark.django_db

TERMINAL = "5985841581756135023"
PASSWORD = "agent-pass-123"


@pytest.fixture
def box(sim):
    world = sim.state.istra
    world.add_user("chatfield", "0000")
    world.add_extension(TERMINAL, "144", label="Desk", owner="chatfield")
    agent = make_agent("chatfield")
    account = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=sim.istra_base, login="chatfield",
                           password="0000")
    make_terminal(account, pbx_id=TERMINAL, agent=agent, label="Desk")
    yield sim, account
    control.forget_providers()


def leave(sim, **body) -> dict:
    response = requests.post(f"{sim.url}/_sim/istra/enduser/voicemails", json={"login": "chatfield", **body}, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()


def logged_in(username="chatfield", **client_args) -> Client:
    client = Client(**client_args)
    assert client.login(username=username, password=PASSWORD)
    return client


def test_it_lists_the_agents_voicemail_with_counters_and_audio_links(box):
    sim, account = box
    older = leave(sim, **{"from": "0612345678", "label": "Smith", "timestamp": 1_700_000_000, "durationSecond": 7})
    newer = leave(sim, **{"from": "102", "internal": True, "timestamp": 1_700_000_100})
    [mailbox] = logged_in().get("/enduser/voicemails/").json()["boxes"]
    assert mailbox["account"] == account.pk and mailbox["error"] == ""
    assert [v["id"] for v in mailbox["voicemails"]] == [newer["id"], older["id"]]
    smith = mailbox["voicemails"][1]
    assert (smith["remote_number"], smith["remote_label"], smith["duration"], smith["read"]) == \
        ("0612345678", "Smith", 7, False)
    assert smith["audio"]["ogg"] == f"/enduser/voicemails/{account.pk}/{older['id']}.ogg"
    assert mailbox["counters"] == {"unreadMissedCalls": 0, "unreadVoiceMails": 2, "unreadTextMessages": 0}


def test_it_marks_a_voicemail_read(box):
    sim, account = box
    left = leave(sim, **{"from": "0612345678"})
    answer = logged_in().post(f"/enduser/voicemails/{account.pk}/{left['id']}/read", {"read": True},
                              content_type="application/json")
    assert answer.json()["voicemail"]["read"] is True
    assert sim.state.istra.enduser.user("chatfield").voicemails[0].read


def test_it_deletes_only_once_the_agent_confirmed(box):
    sim, account = box
    left = leave(sim, **{"from": "0612345678"})
    client = logged_in()
    url = f"/enduser/voicemails/{account.pk}/{left['id']}/delete"
    refused = client.post(url, {}, content_type="application/json")
    assert refused.status_code == 400 and "cannot be undone" in refused.json()["error"]
    assert len(sim.state.istra.enduser.user("chatfield").voicemails) == 1
    assert client.post(url, {"confirm": True}, content_type="application/json").json() == {"ok": True}
    assert sim.state.istra.enduser.user("chatfield").voicemails == []


def test_it_refuses_a_post_without_the_csrf_token(box):
    sim, account = box
    left = leave(sim, **{"from": "0612345678"})
    client = logged_in(enforce_csrf_checks=True)
    response = client.post(f"/enduser/voicemails/{account.pk}/{left['id']}/delete", {"confirm": True},
                           content_type="application/json")
    assert response.status_code == 403
    assert len(sim.state.istra.enduser.user("chatfield").voicemails) == 1


@pytest.mark.parametrize("audio_format, content_type, magic", [
    ("ogg", "application/ogg", b"OggS"), ("mp4", "application/mp4", b"\x00\x00\x00\x18ftyp"),
    ("aac", "application/mp4", b"\x00\x00\x00\x18ftyp"), ("au", "application/au", b".snd"),
])
def test_it_streams_the_audio_with_the_pbx_content_type(box, audio_format, content_type, magic):
    sim, account = box
    left = leave(sim, **{"from": "0612345678", "durationSecond": 1})
    response = logged_in().get(f"/enduser/voicemails/{account.pk}/{left['id']}.{audio_format}")
    assert response.status_code == 200
    assert response["Content-Type"] == content_type
    assert response["Cache-Control"] == "private, no-store"
    assert b"".join(response.streaming_content).startswith(magic)


def test_it_offers_the_audio_as_a_download_when_asked(box):
    sim, account = box
    left = leave(sim, **{"from": "0612345678"})
    response = logged_in().get(f"/enduser/voicemails/{account.pk}/{left['id']}.au?dl=true")
    assert response["Content-Disposition"] == f'attachment; filename="voicemail-{left["id"]}.au"'


def test_it_hides_another_agents_voicemail_but_shows_it_to_a_supervisor(box):
    sim, account = box
    left = leave(sim, **{"from": "0612345678"})
    make_agent("colleague")
    make_agent("boss", is_supervisor=True)
    url = f"/enduser/voicemails/{account.pk}/{left['id']}.ogg"
    assert logged_in("colleague").get(url).status_code == 404
    assert logged_in("colleague").get("/enduser/voicemails/").json() == {"boxes": []}
    assert logged_in("boss").get(url).status_code == 200
    assert Client().get(url).status_code == 302  # to the login page


def test_it_answers_404_for_a_voicemail_the_pbx_does_not_have(box):
    _, account = box
    assert logged_in().get(f"/enduser/voicemails/{account.pk}/8967300633232582577.ogg").status_code == 404


def test_it_calls_the_agent_back_to_play_the_message(box):
    sim, account = box
    left = leave(sim, **{"from": "0612345678"})
    answer = logged_in().post(f"/enduser/voicemails/{account.pk}/{left['id']}/call-me")
    assert answer.json() == {"ok": True, "terminal": "Desk"}
    [line] = sim.state.istra.calls.lines.values()
    assert (line.extension_id, line.destination) == (TERMINAL, left["playNumber"])
    assert line.destination.startswith("555;lra=144;cd msgid=")
