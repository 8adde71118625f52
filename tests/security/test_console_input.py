"""Whatever a page sends on the console websocket, it gets an answer and the socket stays open.

Non-JSON text, a binary frame, a call id that is not one, deep nesting: each closed the socket with
1011 and logged a traceback; ``"call": true`` was call 1; and a merge's ``other_call`` given as a number
reached the provider as it was (an AttributeError in Istra myRCC's transport). Now each gets an error
reply, and the other call of a transfer, merge or conference is always a Call the viewer may act on,
resolved before any provider sees it.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from ctihub.asgi import application
from telephony import console
from telephony.models import Call
from tests.factories import make_account, make_agent, make_call, make_terminal

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world():
    account = make_account()
    me, other = make_agent("me"), make_agent("other")
    terminal = make_terminal(account, agent=me)
    mine = make_call(account, agent=me, terminal=terminal, state=Call.State.TALKING)
    second = make_call(account, agent=me, terminal=terminal, state=Call.State.HELD)
    theirs = make_call(account, agent=other, terminal=make_terminal(account, agent=other))
    elsewhere = make_call(make_account(), agent=me)
    client = Client()
    client.force_login(me.user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    headers = [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000"), (b"cookie", cookie.encode())]
    return {"me": me, "mine": mine, "second": second, "theirs": theirs, "elsewhere": elsewhere, "headers": headers}


@pytest.fixture
def provider_calls(monkeypatch) -> list:
    """What reached the PBX layer: (call id, action, payload)."""
    seen = []

    def call_action(call, action, payload=None):
        seen.append((call.pk, action, dict(payload or {})))
        return {"done": True}

    monkeypatch.setattr(console.control, "call_action", call_action)
    return seen


async def _exchange(headers, frames: list) -> list:
    """Send each frame (text, bytes or a dict sent as JSON), collect each answer, then prove the socket still works."""
    comm = WebsocketCommunicator(application, "/ws/console/", headers=headers)
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_json_from(timeout=5))["type"] == "snapshot"
    answers = []
    for frame in frames:
        if isinstance(frame, bytes):
            await comm.send_input({"type": "websocket.receive", "bytes": frame})
        elif isinstance(frame, str):
            await comm.send_input({"type": "websocket.receive", "text": frame})
        else:
            await comm.send_json_to(frame)
        output = await comm.receive_output(timeout=5)
        assert output["type"] == "websocket.send", f"{frame!r:.80} closed the socket: {output}"
        answers.append(output)
    await comm.send_json_to({"id": "still-open", "action": "snapshot"})
    final = await comm.receive_json_from(timeout=5)
    assert final["id"] == "still-open" and final["ok"] is True
    await comm.disconnect()
    return answers


def exchange(headers, frames: list) -> list[dict]:
    import json

    return [json.loads(answer["text"]) for answer in asyncio.run(_exchange(headers, frames))]


def test_it_answers_frames_that_are_not_json_requests_with_an_error(world, provider_calls, caplog):
    caplog.set_level(logging.WARNING)
    deep = "[" * 5000 + "]" * 5000
    answers = exchange(world["headers"], [
        "not json", b"\x00\x01binary", deep, "", "[1, 2]", "42", '"text"', "{" * 20000,
        '{"action": {"nested": [1, 2]}}', '{"id": [[[1]]], "action": "nope"}',
    ])
    assert all(a["type"] == "result" and a["ok"] is False and a["error"] for a in answers), answers
    assert [a["error"] for a in answers[:3]] == [
        "not a JSON request", "send requests as JSON text, not binary frames", "not a JSON request"]
    assert answers[-1]["id"] is None  # an id that is not a plain value is not echoed back
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a malformed frame logged an error"
    assert provider_calls == []


@pytest.mark.parametrize("call", ["abc", [1, 2], True, False, 1.0, None, {"id": 1}, -1, 0, 2**70, "1"])
def test_it_refuses_a_call_id_that_is_not_a_positive_whole_number(world, provider_calls, call):
    answers = exchange(world["headers"], [{"id": 1, "action": "call_action", "call": call, "name": "hangup"}])
    assert answers == [{"type": "result", "id": 1, "ok": False, "error": "which call?"}]
    assert provider_calls == []


def test_it_never_lets_other_call_reach_the_provider_as_the_page_sent_it(world, provider_calls):
    mine, second, theirs, elsewhere = world["mine"], world["second"], world["theirs"], world["elsewhere"]

    def merge(payload, request_id=1):
        return {"id": request_id, "action": "call_action", "call": mine.pk, "name": "merge", "payload": payload}

    answers = exchange(world["headers"], [
        merge({"other_call": 47_000_000}),  # the frame: an id, as it was, reached Istra myRCC
        merge({"other_call": theirs.pk}),
        merge({"call": theirs.pk}),
        merge({"other_call": True}),
        merge({"other_call": "12"}),
        merge({"other_call": {"pbx_call_id": "forged"}}),
        merge({"call": second.pk, "other_call": theirs.pk}),
        merge({"call": mine.pk}),
        merge({"call": elsewhere.pk}),
        merge({"destination": [[["deep"]]]}),
        {"id": 2, "action": "call_action", "call": mine.pk, "name": "merge", "payload": [second.pk]},
    ])
    assert [a["ok"] for a in answers] == [False] * 11, answers
    assert [a["error"] for a in answers] == [
        "the other call is not yours", "the other call is not yours", "the other call is not yours",
        "which other call?", "which other call?", "the payload's values must be text or numbers",
        "which other call?", "pick another call than this one", "the other call is on another PBX account",
        "the payload's values must be text or numbers", "the payload must be an object",
    ]
    assert provider_calls == []

    answers = exchange(world["headers"], [merge({"call": second.pk}), merge({"other_call": second.pk}, 2)])
    assert [a["ok"] for a in answers] == [True, True], answers
    assert len(provider_calls) == 2
    for call_id, action, payload in provider_calls:
        assert (call_id, action) == (mine.pk, "merge")
        assert set(payload) == {"other_call"} and isinstance(payload["other_call"], Call)
        assert payload["other_call"].pk == second.pk


def test_it_answers_a_request_that_fails_inside_the_hub_and_stays_open(world, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise AttributeError("'int' object has no attribute 'pbx_call_id'")

    monkeypatch.setattr(console.control, "call_action", broken)
    answers = exchange(world["headers"], [
        {"id": 9, "action": "call_action", "call": world["mine"].pk, "name": "hold"}])
    assert answers == [{"type": "result", "id": 9, "ok": False,
                        "error": "ctihub could not do that (an internal error, logged)"}]
    assert any("console request 'call_action'" in r.getMessage() and r.exc_info for r in caplog.records)
