"""The console's call-control choices (issue 18, point 6): which other call a transfer or merge joins, which
conference party is removed, and what the card may offer on each PBX (``console.controls`` in the snapshot).

A party, like the other call, is named by the page as one of the agent's calls; the provider only ever gets
a Call resolved and checked here (``party_call``), never the page's value.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client

from telephony import console
from telephony import updates as u
from telephony.models import Call, PbxAccount
from tests.factories import make_account, make_agent, make_call, make_terminal


@pytest.fixture
def world(db):
    account = make_account(kind=PbxAccount.Kind.TELEPO)
    me, other = make_agent("me"), make_agent("other")
    terminal = make_terminal(account, agent=me)
    calls = {
        "mine": make_call(account, agent=me, terminal=terminal, state=Call.State.TALKING),
        "second": make_call(account, agent=me, terminal=terminal, state=Call.State.HELD),
        "third": make_call(account, agent=me, terminal=terminal, state=Call.State.TALKING),
        "ended": make_call(account, agent=me, terminal=terminal, state=Call.State.ENDED),
        "theirs": make_call(account, agent=other, terminal=make_terminal(account, agent=other)),
        "elsewhere": make_call(make_account(), agent=me),
    }
    return {"account": account, "me": me, "viewer": console.Viewer(me.user, me), **calls}


@pytest.fixture
def provider_calls(monkeypatch) -> list:
    """What reached the PBX layer: (call id, action, payload)."""
    seen = []

    def call_action(call, action, payload=None):
        seen.append((call.pk, action, dict(payload or {})))
        return {"done": True}

    monkeypatch.setattr(console.control, "call_action", call_action)
    return seen


def test_it_hands_the_provider_the_other_call_the_agent_chose_among_several(world, provider_calls):
    for chosen in ("second", "third"):
        console.act_on_call(world["viewer"], world["mine"].pk, u.TRANSFER, {"call": world[chosen].pk})
    assert [(pk, action, payload["other_call"].pk) for pk, action, payload in provider_calls] == [
        (world["mine"].pk, u.TRANSFER, world["second"].pk), (world["mine"].pk, u.TRANSFER, world["third"].pk)]


def test_it_hands_the_provider_the_party_to_remove_as_the_agents_own_call(world, provider_calls):
    console.act_on_call(world["viewer"], world["mine"].pk, u.CONFERENCE_REMOVE, {"party": world["third"].pk})
    ((call_id, action, payload),) = provider_calls
    assert (call_id, action, set(payload)) == (world["mine"].pk, u.CONFERENCE_REMOVE, {"party_call"})
    assert isinstance(payload["party_call"], Call) and payload["party_call"].pk == world["third"].pk


@pytest.mark.parametrize(("party", "error"), [
    ("12", "which party?"), (True, "which party?"), (-1, "which party?"), (0, "which party?"), (2**70, "which party?"),
    (47_000_000, "that party's call is not yours"), ("theirs", "that party's call is not yours"),
    ("mine", "pick another call than this one"), ("elsewhere", "that party's call is on another PBX account"),
    ("ended", "that party has left already"),
])
def test_it_refuses_a_party_that_is_not_another_live_call_of_the_agents_on_the_account(world, provider_calls, party,
                                                                                        error):
    named = world[party].pk if isinstance(party, str) and party in world else party
    with pytest.raises(console.Refused) as refused:
        console.act_on_call(world["viewer"], world["mine"].pk, u.CONFERENCE_REMOVE, {"party": named})
    assert str(refused.value) == error
    assert provider_calls == []


def test_it_refuses_a_party_named_twice_differently_and_a_transfer_to_an_ended_call(world, provider_calls):
    viewer, mine = world["viewer"], world["mine"].pk
    with pytest.raises(console.Refused, match=r"^which party\?$"):
        console.act_on_call(viewer, mine, u.CONFERENCE_REMOVE, {"party": world["second"].pk,
                                                                "party_call": world["third"].pk})
    with pytest.raises(console.Refused, match="^the other call has ended$"):
        console.act_on_call(viewer, mine, u.TRANSFER, {"call": world["ended"].pk})
    assert provider_calls == []


def test_it_tells_the_console_what_each_accounts_pbx_offers_beyond_its_buttons(world):
    myrcc = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC)
    controls = console.snapshot(world["viewer"])["controls"]
    assert controls[str(world["account"].pk)] == {
        "transfer_types": ["BASIC", "VOICEMAIL", "CAMP_ON", "DIVERSION_BYPASS"], "blind_transfer": True,
        "remove_party": True}
    # myRCC's spec has no per-party removal (only leave and disconnect of the agent's own line) and no
    # transfer options: its card offers neither.
    assert controls[str(myrcc.pk)] == {"transfer_types": [], "blind_transfer": False, "remove_party": False}


def test_it_still_sends_a_snapshot_when_an_accounts_provider_is_gone(world):
    gone = make_account()
    PbxAccount.objects.filter(pk=gone.pk).update(kind="uninstalled_pbx")
    controls = console.snapshot(world["viewer"])["controls"]
    assert str(gone.pk) not in controls and str(world["account"].pk) in controls


@pytest.mark.django_db(transaction=True)
def test_it_answers_a_bad_party_over_the_websocket_with_an_error_and_acts_on_a_good_one(provider_calls):
    from tests.security.test_console_input import exchange

    account = make_account(kind=PbxAccount.Kind.TELEPO)
    me = make_agent("me")
    terminal = make_terminal(account, agent=me)
    mine, leg = (make_call(account, agent=me, terminal=terminal, state=Call.State.TALKING) for _ in range(2))
    client = Client()
    client.force_login(me.user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    headers = [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000"), (b"cookie", cookie.encode())]

    def remove(party, request_id):
        return {"id": request_id, "action": "call_action", "call": mine.pk, "name": u.CONFERENCE_REMOVE,
                "payload": {"party": party}}

    answers = exchange(headers, [remove("x", 1), remove(mine.pk, 2), remove(leg.pk, 3)])
    assert [(a["id"], a["ok"], a.get("error")) for a in answers] == [
        (1, False, "which party?"), (2, False, "pick another call than this one"), (3, True, None)]
    assert [(pk, payload["party_call"].pk) for pk, _action, payload in provider_calls] == [(mine.pk, leg.pk)]
