"""TelepoProvider against the real simulator: the bearer ticket, every action's request, stateToken conflicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from telephony import updates as u
from telephony.models import Call, PbxAccount
from telephony.providers import provider_for
from telephony.providers.base import ActionRefused, NotSupported, ProviderError, StateConflict
from telephony.providers.telepo import transport
from telephony.providers.telepo.reconcile import reconcile_user
from telephony.providers.telepo.tests.conftest import ALICE, DEVICE
from telephony.providers.telepo.transport import TelepoProvider
from tests.factories import make_account, make_terminal
from tests.support.processes import free_port
from tests.support.telepo_sim import DOMAIN, TICKET

pytestmark = pytest.mark.django_db
FIXTURES = Path(__file__).parent / "fixtures"
CONTROL = "/api/call/control/v1"


@pytest.fixture
def provider(account, terminal):
    provider = provider_for(account)
    yield provider
    provider.close()


def requests_after(world, seq: int) -> list[dict]:
    return world.requests_since(seq)


def last_seq(world) -> int:
    entries = world.requests_since(0)
    return entries[-1]["seq"] if entries else 0


def hub_call(account, world, sim_call) -> Call:
    """The call as the hub holds it once a snapshot brought it in."""
    reconcile_user(account, sim_call.user_id)
    return Call.objects.select_related("terminal").get(account=account, pbx_call_id=sim_call.call_id)


def ringing(world):
    return world.incoming_call(ALICE, "+33612345678", display_name="Bob")


def talking(world, caller: str = "+33612345678"):
    call = world.incoming_call(ALICE, caller)
    return world.answer(call.call_id)


def held(world):
    call = talking(world)
    world.act(world.user(ALICE), "hold", call.call_id, {})
    return call


def parked(world):
    call = talking(world)
    world.act(world.user(ALICE), "park", call.call_id, {})
    return call


def muted(world):
    call = talking(world)
    world.act(world.user(ALICE), "mute", call.call_id, {})
    return call


def held_beside_an_active_call(world):
    call = held(world)
    talking(world, "+33622222222")
    return call


def conference(world):
    first, second = talking(world), talking(world, "+33622222222")
    world.act(world.user(ALICE), "conferenceadd", second.call_id, {"targetCallId": first.call_id})
    return second


def test_it_is_the_registered_telepo_provider_and_holds_no_socket(provider):
    assert isinstance(provider, TelepoProvider)
    assert not provider.holds_sockets
    assert set(provider.actions) == set(transport.CALL_ACTIONS)


def test_it_sends_the_api_ticket_as_a_bearer_token_to_the_snapshot_path(provider, world):
    talking(world)
    snapshot = provider.snapshot(ALICE)
    assert [c["status"] for c in snapshot["calls"]] == ["ACTIVE"]
    (request,) = world.requests_since(0)
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert (request["method"], request["path"], headers["authorization"]) == (
        "GET", f"/api/call/state/v1/snapshot/{DOMAIN}/{ALICE}", f"Bearer {TICKET}")


def test_it_tests_the_connection_by_reading_every_users_snapshot(provider, world):
    talking(world)
    assert provider.test_connection() == "1 Telepo user reachable, 1 call now"


def test_it_asks_for_users_before_testing_a_connection(account):
    with pytest.raises(ProviderError, match="one terminal per Telepo user") as refused:
        provider_for(account).test_connection()
    assert refused.value.permanent


def test_it_says_telepo_lists_no_users(provider):
    with pytest.raises(NotSupported, match="add one terminal per Telepo user"):
        provider.fetch_terminals()


@pytest.mark.parametrize(("number", "destination"), [
    ("0612345678", "tel:+33612345678"),  # national, read with the account's region
    ("+44 20 7946 0958", "tel:+442079460958"),
    ("tel:+33612345678", "tel:+33612345678"),
    ("8473", f"tel:8473;phone-context={DOMAIN}"),  # an internal short number
    ("sip:bob@organization.org", "sip:bob@organization.org"),
])
def test_it_makes_a_call_from_the_users_device_to_a_tel_uri(provider, world, number, destination):
    answer = provider.place_call(ALICE, number)
    assert (answer["status"], answer["inbound"]) == ("ALERTING", False)
    (request,) = world.requests_since(0)
    assert (request["method"], request["path"], request["status"]) == (
        "POST", f"{CONTROL}/make/{DOMAIN}/{ALICE}/{DEVICE}", 200)
    assert json.loads(request["body"]) == {"destination": destination}


def test_it_refuses_to_call_from_a_user_without_a_device_before_any_request(account, world):
    make_terminal(account, pbx_id="bob@organization.org")
    with pytest.raises(ProviderError, match="deviceId") as refused:
        provider_for(account).place_call("bob@organization.org", "0612345678")
    assert refused.value.permanent and world.requests_since(0) == []


def test_it_refuses_a_destination_that_is_no_number(provider, world):
    with pytest.raises(ActionRefused, match="not a phone number"):
        provider.place_call(ALICE, "call me")
    assert world.requests_since(0) == []


ACTION_CASES = [
    # action, how to get a call where Telepo allows it, payload, Telepo path action, extra body, status after
    (u.ANSWER, ringing, {"device_id": "+1555555"}, "answer", {"deviceId": "+1555555"}, "ACTIVE"),
    (u.PICKUP, parked, {}, "pickup", {}, "ACTIVE"),
    (u.HOLD, talking, {}, "hold", {}, "HELD"),
    (u.RESUME, held, {}, "resume", {}, "ACTIVE"),
    (u.ALTERNATE, held_beside_an_active_call, {}, "alternate", {}, "ACTIVE"),
    (u.PARK, talking, {}, "park", {}, "PARKED"),
    (u.MUTE, talking, {}, "mute", {}, "ACTIVE"),
    (u.UNMUTE, muted, {}, "unmute", {}, "ACTIVE"),
    (u.MOVE, talking, {"device_id": "+1555555"}, "move", {"deviceId": "+1555555"}, "ACTIVE"),
    (u.SEND_DTMF, talking, {"digits": "12#"}, "dtmf", {"digits": "12#"}, "ACTIVE"),
    (u.REDIRECT, talking, {"destination": "+15555", "blind": True, "type": "CAMP_ON"}, "singlesteptransfer",
     {"blind": True, "type": "CAMP_ON", "destination": "tel:+15555"}, "TERMINATED"),
    (u.REDIRECT, held, {"destination": "0612345678"}, "singlesteptransfer",
     {"blind": False, "type": "BASIC", "destination": "tel:+33612345678"}, "ACTIVE"),
    (u.LEAVE, conference, {}, "conferenceleave", {}, "TERMINATED"),
    (u.HANGUP, talking, {}, "terminate", {}, "TERMINATED"),
]


@pytest.mark.parametrize(("action", "prepare", "payload", "path_action", "extra", "status"), ACTION_CASES,
                         ids=[f"{c[0]}-{c[1].__name__}" for c in ACTION_CASES])
def test_it_sends_each_action_with_the_calls_state_token(provider, account, world, action, prepare, payload,
                                                          path_action, extra, status):
    sim_call = prepare(world)
    call = hub_call(account, world, sim_call)
    seq = last_seq(world)
    answer = provider.call_action(call, action, payload)
    (request,) = requests_after(world, seq)
    assert (request["method"], request["path"], request["status"]) == (
        "POST", f"{CONTROL}/{path_action}/{DOMAIN}/{ALICE}/{sim_call.call_id}", 200)
    assert json.loads(request["body"]) == {"stateToken": int(call.state_token), **extra}
    assert answer["status"] == status


@pytest.mark.parametrize(("action", "path_action"), [(u.TRANSFER, "transfer"), (u.CONFERENCE_ADD, "conferenceadd")])
def test_it_sends_the_other_calls_id_and_token_to_transfer_or_conference(provider, account, world, action,
                                                                          path_action):
    first, second = held(world), talking(world, "+33622222222")
    other, call = hub_call(account, world, first), hub_call(account, world, second)
    seq = last_seq(world)
    provider.call_action(call, action, {"other_call": other})
    (request,) = requests_after(world, seq)
    assert request["path"] == f"{CONTROL}/{path_action}/{DOMAIN}/{ALICE}/{second.call_id}"
    assert json.loads(request["body"]) == {"stateToken": int(call.state_token), "targetCallId": first.call_id,
                                           "targetStateToken": int(other.state_token)}


def test_it_names_the_participant_to_remove_from_a_conference(provider, account, world):
    sim_call = conference(world)
    (other,) = [p["id"] for p in sim_call.participants if p["id"] != sim_call.call_id]
    call = hub_call(account, world, sim_call)
    seq = last_seq(world)
    answer = provider.call_action(call, u.CONFERENCE_REMOVE, {"participant_id": other})
    (request,) = requests_after(world, seq)
    assert json.loads(request["body"]) == {"stateToken": int(call.state_token), "participantId": other}
    assert [p["id"] for p in answer["participants"]] == [sim_call.call_id]


def test_it_applies_the_answer_so_the_next_action_carries_the_new_token(provider, account, world):
    sim_call = talking(world)
    call = hub_call(account, world, sim_call)
    provider.call_action(call, u.HOLD, {})
    call.refresh_from_db()
    assert (call.state, call.state_token) == (Call.State.HELD, str(world.call(sim_call.call_id).state_token))
    assert u.RESUME in call.allowed_actions
    provider.call_action(call, u.RESUME, {})  # no conflict: the token is the new one
    assert world.call(sim_call.call_id).status == "ACTIVE"


def test_it_omits_the_state_token_it_does_not_know(provider, account, world):
    sim_call = talking(world)
    call = hub_call(account, world, sim_call)
    call.state_token = ""
    seq = last_seq(world)
    provider.call_action(call, u.HOLD, {})
    (request,) = requests_after(world, seq)
    assert json.loads(request["body"]) == {}


def test_it_reports_a_state_token_conflict_refreshes_the_call_and_never_retries(provider, account, world):
    sim_call = talking(world)
    call = hub_call(account, world, sim_call)
    world.act(world.user(ALICE), "hold", sim_call.call_id, {})  # someone else moved it on meanwhile
    seq = last_seq(world)
    with pytest.raises(StateConflict, match="changed at the PBX.*refreshed") as conflict:
        provider.call_action(call, u.HOLD, {})
    assert (conflict.value.status, conflict.value.code, conflict.value.permanent) == (
        409, "STATE_TOKEN_MISMATCH", False)
    sent = [(r["method"], r["path"].split("/v1/")[1].split("/")[0], r["status"]) for r in requests_after(world, seq)]
    assert sent == [("POST", "hold", 409), ("GET", "snapshot", 200)]
    call.refresh_from_db()
    assert (call.state, call.state_token) == (Call.State.HELD, str(world.call(sim_call.call_id).state_token))


def test_it_reports_a_stale_target_token_as_a_conflict_too(provider, account, world):
    first, second = held(world), talking(world, "+33622222222")
    other, call = hub_call(account, world, first), hub_call(account, world, second)
    world.act(world.user(ALICE), "park", first.call_id, {})  # only the target moved on
    with pytest.raises(StateConflict):
        provider.call_action(call, u.TRANSFER, {"other_call": other})
    assert (world.call(first.call_id).status, world.call(second.call_id).status) == ("PARKED", "ACTIVE")


@pytest.mark.parametrize(("action", "payload", "message"), [
    (u.REDIRECT, {"destination": "  "}, "destination"),
    (u.REDIRECT, {"destination": "+15555", "type": "LATER"}, "transfer type"),
    (u.SEND_DTMF, {"digits": "12x"}, "digits"),
    (u.MOVE, {}, "device"),
    (u.TRANSFER, {}, "other call"),
    (u.CONFERENCE_REMOVE, {}, "participant"),
    (u.REDIRECT, {"destination": "+15555", "blind": "false"}, "blind"),  # a form's text would read as True
])
def test_it_refuses_an_incomplete_action_before_any_request(provider, account, world, action, payload, message):
    call = hub_call(account, world, talking(world))
    seq = last_seq(world)
    with pytest.raises(ActionRefused, match=message):
        provider.call_action(call, action, payload)
    assert requests_after(world, seq) == []


def test_it_cannot_merge_or_add_a_party_the_istra_way(provider, account, world):
    call = hub_call(account, world, talking(world))
    with pytest.raises(NotSupported):
        provider.call_action(call, u.MERGE, {})


def test_it_refuses_to_act_on_a_call_without_a_telepo_user(provider, account):
    call = Call(account=account, pbx_call_id="c1", state=Call.State.TALKING)
    with pytest.raises(ActionRefused, match="no Telepo user"):
        provider.call_action(call, u.HOLD, {})


def test_it_acts_as_the_agents_telepo_user_when_the_call_has_no_terminal(provider, account, terminal, world):
    sim_call = talking(world)
    call = hub_call(account, world, sim_call)
    Call.objects.filter(pk=call.pk).update(terminal=None)
    call = Call.objects.get(pk=call.pk)
    provider.call_action(call, u.HOLD, {})
    assert world.call(sim_call.call_id).status == "HELD"


def test_it_passes_on_telepos_refusal_of_an_action_the_call_does_not_allow(provider, account, world):
    call = hub_call(account, world, talking(world))
    with pytest.raises(ActionRefused, match="ACTION_NOT_ALLOWED"):
        provider.call_action(call, u.RESUME, {})


def test_it_reports_a_call_gone_at_the_pbx(provider, account, world):
    sim_call = talking(world)
    call = hub_call(account, world, sim_call)
    world.hangup(sim_call.call_id)
    with pytest.raises(ActionRefused, match="404"):
        provider.call_action(call, u.HOLD, {})


@pytest.mark.parametrize(("setup", "status", "hint"), [
    (lambda world: world.revoke_ticket(TICKET), 401, "API ticket"),
    (lambda world: world.add_user(ALICE, DOMAIN, cti_licence=False), 403, "licence"),
])
def test_it_reports_a_refused_ticket_or_licence_as_permanent(provider, world, setup, status, hint):
    setup(world)
    with pytest.raises(ProviderError, match=hint) as refused:
        provider.snapshot(ALICE)
    assert (refused.value.permanent, refused.value.status) == (True, status)


def test_it_reports_an_unreachable_pbx_as_worth_retrying(db):
    account = make_account(kind=PbxAccount.Kind.TELEPO, base_url=f"http://127.0.0.1:{free_port()}",
                           enterprise=DOMAIN, api_token=TICKET)
    with pytest.raises(ProviderError, match="did not answer") as failed:
        provider_for(account).snapshot(ALICE)
    assert not failed.value.permanent


def test_it_removes_the_agents_other_conference_leg_by_its_call_id(provider, account, world):
    """The console names the party as the agent's call (``party_call``); Telepo lists participants by call id."""
    sim_call = conference(world)
    (first_id,) = [p["id"] for p in sim_call.participants if p["id"] != sim_call.call_id]
    party, call = hub_call(account, world, world.call(first_id)), hub_call(account, world, sim_call)
    assert u.CONFERENCE_REMOVE in call.allowed_actions
    seq = last_seq(world)
    answer = provider.call_action(call, u.CONFERENCE_REMOVE, {"party_call": party})
    (request,) = requests_after(world, seq)
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert (request["method"], request["path"], request["status"], headers["authorization"]) == (
        "POST", f"{CONTROL}/conferenceremove/{DOMAIN}/{ALICE}/{sim_call.call_id}", 200, f"Bearer {TICKET}")
    assert json.loads(request["body"]) == {"stateToken": int(call.state_token), "participantId": first_id}
    assert [p["id"] for p in answer["participants"]] == [sim_call.call_id]
    assert (world.call(first_id).status, world.call(sim_call.call_id).status) == ("TERMINATED", "ACTIVE")


def test_it_reports_a_party_telepo_does_not_know_in_the_conference_as_refused(provider, account, world):
    sim_call = conference(world)
    call = hub_call(account, world, sim_call)
    with pytest.raises(ActionRefused, match="HTTP 404"):
        provider.call_action(call, u.CONFERENCE_REMOVE, {"participant_id": "not-a-participant"})
    assert len(world.call(sim_call.call_id).participants) == 2


@pytest.mark.parametrize(("blind", "status"), [(False, "ACTIVE"), (True, "TERMINATED")])
def test_it_sends_a_transfer_to_a_number_blind_or_not_with_its_type(provider, account, world, blind, status):
    sim_call = talking(world)
    call = hub_call(account, world, sim_call)
    seq = last_seq(world)
    provider.call_action(call, u.REDIRECT, {"destination": "102", "type": "voicemail", "blind": blind})
    (request,) = requests_after(world, seq)
    assert request["path"] == f"{CONTROL}/singlesteptransfer/{DOMAIN}/{ALICE}/{sim_call.call_id}"
    assert json.loads(request["body"]) == {"stateToken": int(call.state_token), "blind": blind, "type": "VOICEMAIL",
                                           "destination": f"tel:102;phone-context={DOMAIN}"}
    assert world.call(sim_call.call_id).status == status  # blind: Telepo clears the agent's call


@pytest.mark.parametrize("action", [u.CONFERENCE_ADD, u.TRANSFER])
def test_it_asks_for_the_users_snapshot_after_an_action_that_changes_their_other_calls(provider, account, world,
                                                                                        queued, action):
    first, second = held(world), talking(world, "+33622222222")
    other, call = hub_call(account, world, first), hub_call(account, world, second)
    provider.call_action(call, action, {"other_call": other})
    assert ("reconcile_user_task", (account.pk, ALICE)) in queued


def test_it_declares_the_transfer_types_blind_transfers_and_party_removal_it_sends():
    from telephony.providers import registry

    caps = registry.capabilities("telepo")
    assert (caps.transfer_types, caps.blind_transfer, caps.remove_party) == (transport.TRANSFER_TYPES, True, True)
    assert caps.transfer_types[0] == "BASIC"  # the spec's default, the chooser's first


@pytest.mark.django_db(transaction=True)  # the clicks run on threads of their own, with connections of their own
def test_it_places_two_agents_calls_side_by_side_on_the_accounts_one_provider(account, terminal, world, monkeypatch):
    # One at a time per account, a slow Telepo answer held every other agent's click of the account behind it. Each
    # click's request waits at a barrier for the other's: one at a time, the first holds the account's lock there
    # and the barrier breaks; side by side, both pass. No clock is read.
    import threading

    from telephony import control
    from telephony.providers import registry
    from telephony.providers.telepo.transport import TelepoProvider
    from tests.factories import make_agent, make_terminal
    from tests.support.telepo_sim import DOMAIN

    bob = "bob@organization.org"
    world.add_user(bob, DOMAIN, email="bob@organization.com", number="+12203", devices={"bob-soft": "SOFT"})
    bobs = make_terminal(account, pbx_id=bob, extension="bob-soft", agent=make_agent("bob"))
    both_in_flight, real = threading.Barrier(2, timeout=10), TelepoProvider.request

    def request_meeting_the_other(self, method, path_key, *args, **kwargs):
        if path_key == "make":
            both_in_flight.wait()  # BrokenBarrierError when the other click cannot get here meanwhile
        return real(self, method, path_key, *args, **kwargs)

    monkeypatch.setattr(TelepoProvider, "request", request_meeting_the_other)
    registry.forget_providers()
    answers, failures = [], []

    def click(agents_terminal):
        from django.db import connection

        try:
            answers.append(control.place_call(agents_terminal, "0612345678"))
        except Exception as exc:  # noqa: BLE001 - said by the assertion below
            failures.append(exc)
        finally:
            connection.close()  # the thread's own

    threads = [threading.Thread(target=click, args=(t,)) for t in (terminal, bobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    registry.forget_providers()
    assert (len(answers), failures, len(world.calls)) == (2, [], 2)


@pytest.mark.django_db
def test_it_redirects_a_ringing_call_to_a_user_by_the_destination_that_reaches_them(account, terminal, world):
    # Responsible-manager routing sends a shared line's call to the manager's terminal as the PBX reaches it.
    from telephony.providers.telepo.transport import TelepoProvider
    from tests.factories import make_terminal
    from tests.support.telepo_sim import DOMAIN

    world.add_user("ann@organization.org", DOMAIN, email="ann@organization.com", number="+12204")
    ann = make_terminal(account, pbx_id="ann@organization.org", extension="ann.soft")
    ringing = world.incoming_call(ALICE, "+33612345678")
    reconcile_user(account, ALICE)
    call = Call.objects.select_related("terminal").get(account=account, pbx_call_id=ringing.call_id)
    provider_for(account).call_action(call, u.REDIRECT, {"destination": TelepoProvider.reach(ann)})
    assert world.call(ringing.call_id).transfers[-1]["destination"] == "sip:ann@organization.org"
