"""Istra sockets held by real Celery workers, against the simulator, landing in PostgreSQL."""

import os
import signal

import pytest

from telephony import control
from telephony.models import Call, CallEvent, Listener, PbxAccount
from tests.factories import make_account, make_agent
from tests.support.processes import wait_for
from tests.support.sim_control import IstraControl

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
TERMINAL = "5985841581756135023"


def mycrm_account(hub, sim, terminals=(TERMINAL,)):
    sim.add_user("chatfield", "0000", mycrm=True)
    for n, terminal in enumerate(terminals):
        sim.add_extension(terminal, str(104 + n), owner="chatfield", deviceModel="SIP generic device")
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url=f"{hub.sim_url}/restletrouter",
                           login="chatfield", password="0000")
    control.sync_terminals(account)
    return account


def connected_listeners(account) -> list[Listener]:
    listeners = list(Listener.objects.filter(account=account))
    return listeners if listeners and all(l.state == Listener.State.CONNECTED for l in listeners) else []


def events_of(call: Call) -> list[str]:
    return list(call.events.order_by("received_at", "id").values_list("kind", flat=True))


def test_it_records_a_whole_mycrm_call_through_a_real_worker(hub):
    hub.start(workers=1, web=False)
    sim = IstraControl(hub.sim_url)
    account = mycrm_account(hub, sim)
    agent = make_agent()
    account.terminals.update(agent=agent)
    wait_for(lambda: connected_listeners(account), 30, what="the myCrm listener")

    line = sim.incoming(TERMINAL, "0612345678", label="Smith", acdId="0900000171")
    wait_for(lambda: Call.objects.filter(account=account, pbx_call_id=line["callId"]).exists(), 10, what="the call")
    for move in ("answer", "hold", "unhold"):
        sim.move(line["callId"], move)
    sim.move(line["callId"], "hangup", cause="disconnect")
    call = wait_for(lambda: Call.objects.filter(account=account, pbx_call_id=line["callId"], state="ended").first(),
                    10, what="the call to end")

    assert call.agent == agent
    assert (call.direction, call.remote_number_e164, call.remote_label) == ("in", "+33612345678", "Smith")
    assert call.answered_at is not None and call.end_cause == "hangup"
    # Each callTalking is named by its talkCause: the resume is no second answer.
    assert events_of(call) == ["callRinging", "callTalking.answer", "callHeld", "callTalking.unHold", "callDropped"]
    assert CallEvent.objects.filter(call=call).count() == 5


def test_it_reconnects_a_dropped_socket_and_ends_the_call_right_without_duplicates(hub):
    hub.start(workers=1, web=False)
    sim = IstraControl(hub.sim_url)
    account = mycrm_account(hub, sim)
    wait_for(lambda: connected_listeners(account), 30, what="the listener")
    line = sim.incoming(TERMINAL, "0612345678")
    sim.move(line["callId"], "answer")
    wait_for(lambda: Call.objects.filter(pbx_call_id=line["callId"], state="talking").exists(), 10, what="talking")

    sim.drop_websockets()
    wait_for(lambda: Listener.objects.filter(account=account, reconnects__gte=1, state="connected").exists(), 30,
             what="the listener to reconnect")
    sim.move(line["callId"], "hangup", cause="disconnect")
    call = wait_for(lambda: Call.objects.filter(pbx_call_id=line["callId"], state="ended").first(), 10, what="the end")
    assert events_of(call) == ["callRinging", "callTalking.answer", "callDropped"]
    assert call.end_cause == "hangup"


def test_it_renews_an_expired_session_without_failing_the_request(hub):
    hub.start(workers=0, web=False)
    sim = IstraControl(hub.sim_url)
    account = mycrm_account(hub, sim)
    before = sim.requests()[-1]["seq"]
    sim.expire_sessions()

    control.place_call(account.terminals.get(), "555")

    seen = [(r["method"], r["path"].split("/restletrouter/")[-1], r["status"]) for r in sim.requests(since=before)]
    # The provider logged in for the terminal sync; its session expired; the click-to-call
    # met a 401, logged in again and succeeded, and the caller never saw the failure.
    assert seen == [("GET", "v1/crm/PlaceCall", 401), ("POST", "v1/service/Login", 200), ("GET", "v1/crm/PlaceCall", 200)]


def test_it_holds_each_listener_exactly_once_across_two_workers_and_takes_over_when_one_dies(hub):
    terminals = [str(5985841581756135000 + n) for n in range(4)]
    hub.start(workers=2, web=False)
    sim = IstraControl(hub.sim_url)
    account = mycrm_account(hub, sim, terminals)
    listeners = wait_for(lambda: connected_listeners(account), 30, what="four connected listeners")
    assert len(listeners) == 4
    owners = {l.owner for l in listeners}
    assert len(owners) >= 1
    assert sum(s["sockets"] for s in sim.sessions()) == 4, "each listener must have exactly one socket"

    victim_name = listeners[0].owner.split(":")[0]
    victim = next(w for w in hub.workers if victim_name.startswith(w.name))
    survivor = next(w for w in hub.workers if w is not victim)
    os.kill(victim.process.pid, signal.SIGKILL)

    def all_taken_over():
        current = connected_listeners(account)
        return current if current and all(l.owner.startswith(survivor.name) for l in current) else []

    wait_for(all_taken_over, 15, what="the survivor to take every listener over")
    wait_for(lambda: sum(s["sockets"] for s in sim.sessions()) == 4, 10, what="exactly four sockets again")

    for terminal in terminals:
        line = sim.incoming(terminal, "0612345678")
        sim.move(line["callId"], "hangup", cause="disconnect")
    wait_for(lambda: Call.objects.filter(account=account, state="ended").count() == 4, 10, what="four ended calls")
    for call in Call.objects.filter(account=account):
        assert events_of(call) == ["callRinging", "callDropped"], call.pbx_call_id
