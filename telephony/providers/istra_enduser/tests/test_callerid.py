"""Click-to-call with a shop's caller-ID: set through the End User API, put back once the call is set up."""

from __future__ import annotations

import pytest
import requests

from telephony import control
from telephony.models import Call, PbxAccount
from telephony.providers.istra_enduser import callerid
from tests.factories import make_account, make_agent, make_call, make_terminal

pytestmark = pytest.mark.django_db

TERMINAL = "5985841581756135023"
SHOP = "+33412345670"
OTHER_SHOP = "+33412345699"


@pytest.fixture
def queued(monkeypatch):
    """The restore tasks that would be queued, recorded instead of sent to the broker."""
    calls = []
    monkeypatch.setattr("telephony.providers.istra_enduser.tasks.enqueue",
                        lambda task, *args, countdown=None: calls.append((task.name.rsplit(".", 1)[-1], args, countdown)))
    return calls


@pytest.fixture
def setup(sim, queued):
    world = sim.state.istra
    world.add_user("chatfield", "0000")
    world.add_extension(TERMINAL, "144", label="Desk", owner="chatfield")
    agent = make_agent(extension_code="144", retailcrm_user_id="7")
    mycrm = make_account(kind=PbxAccount.Kind.ISTRA_MYCRM, base_url=sim.istra_base, login="chatfield", password="0000")
    socket_terminal = make_terminal(mycrm, pbx_id=TERMINAL, agent=agent)
    enduser = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=sim.istra_base, login="chatfield",
                           password="0000")
    make_terminal(enduser, pbx_id=TERMINAL, agent=agent)
    yield sim, enduser, socket_terminal, agent
    callerid._redis().delete(callerid.SAVED_KEY.format(enduser.pk))
    control.forget_providers()


def caller_id_at_pbx(sim) -> dict:
    return requests.get(f"{sim.url}/_sim/istra/enduser/chatfield", timeout=5).json()["callerId"]


def test_it_presents_the_shop_number_on_the_agents_end_user_account_and_schedules_the_restore(setup, queued):
    sim, enduser, socket_terminal, _ = setup
    assert callerid.present_external_phone(socket_terminal, "the shop") is False  # not a phone number
    assert callerid.present_external_phone(socket_terminal, SHOP) is True
    assert caller_id_at_pbx(sim) == {"customCallerIDChoice": "ManualSetting", "customCallerID": SHOP}
    assert queued == [("restore_caller_id_task", (enduser.pk,), callerid.RESTORE_FIRST_CHECK)]


def test_it_waits_while_the_call_is_being_set_up_then_restores_the_agents_setting(setup):
    sim, enduser, socket_terminal, agent = setup
    callerid.present_external_phone(socket_terminal, SHOP)
    dialling = make_call(socket_terminal.account, terminal=socket_terminal, agent=agent,
                         direction=Call.Direction.OUTBOUND, state=Call.State.DIALING)
    assert callerid.restore_caller_id(enduser.pk) == "waiting"
    assert caller_id_at_pbx(sim)["customCallerID"] == SHOP
    Call.objects.filter(pk=dialling.pk).update(state=Call.State.TALKING)  # the customer sees the shop now
    assert callerid.restore_caller_id(enduser.pk) == "restored"
    assert caller_id_at_pbx(sim)["customCallerIDChoice"] == "FromPresenceState"
    assert callerid.restore_caller_id(enduser.pk) == "nothing to restore"


def test_it_restores_the_setting_from_before_the_first_of_overlapping_click_to_calls(setup):
    sim, enduser, socket_terminal, _ = setup
    requests.patch(f"{sim.url}/_sim/istra/enduser/chatfield", timeout=5,
                   json={"callerId": {"customCallerIDChoice": "ManualSetting", "customCallerID": "+33489879144"}})
    callerid.present_external_phone(socket_terminal, SHOP)
    callerid.present_external_phone(socket_terminal, OTHER_SHOP)
    assert caller_id_at_pbx(sim)["customCallerID"] == OTHER_SHOP
    assert callerid.restore_caller_id(enduser.pk) == "restored"
    assert caller_id_at_pbx(sim) == {"customCallerIDChoice": "ManualSetting", "customCallerID": "+33489879144"}


def test_it_says_no_when_the_platform_refuses_the_number_and_leaves_nothing_to_restore(setup, queued):
    sim, enduser, socket_terminal, _ = setup
    requests.patch(f"{sim.url}/_sim/istra/enduser/chatfield", timeout=5, json={"allowedCallerIds": [OTHER_SHOP]})
    assert callerid.present_external_phone(socket_terminal, SHOP) is False
    assert caller_id_at_pbx(sim)["customCallerIDChoice"] == "FromPresenceState"
    assert queued == []
    assert callerid.restore_caller_id(enduser.pk) == "nothing to restore"


def test_it_says_no_for_an_agent_without_an_end_user_account_on_that_platform(setup):
    _, enduser, socket_terminal, _ = setup
    PbxAccount.objects.filter(pk=enduser.pk).update(base_url="https://another-istra.example.com/restletrouter")
    assert callerid.present_external_phone(socket_terminal, SHOP) is False
