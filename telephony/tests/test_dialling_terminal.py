"""Which terminal dials: the admin's choice for the agent, else one fixed rule; console and retailCRM alike."""

from __future__ import annotations

import threading

import pytest

from telephony import console, control
from telephony.models import PbxAccount
from tests.factories import make_account, make_agent, make_terminal

pytestmark = pytest.mark.django_db

MYCRM, ENDUSER, MYRCC = PbxAccount.Kind.ISTRA_MYCRM, PbxAccount.Kind.ISTRA_ENDUSER, PbxAccount.Kind.ISTRA_MYRCC


class DialRecorder:
    def __init__(self):
        self.placed = []

    def place_call(self, terminal_pbx_id, destination):
        self.placed.append((terminal_pbx_id, destination))
        return {"restUri": "v1/crm/CallLine/-1"}


@pytest.fixture
def pbx(monkeypatch):
    recorder = DialRecorder()
    monkeypatch.setattr(control, "cached_provider", lambda account: (recorder, threading.Lock()))
    return recorder


@pytest.fixture
def agent_on_two_accounts():
    """An agent with a myCrm terminal on "a-..." and an End User terminal on "b-...": a-... sorts first."""
    agent = make_agent()
    first = make_terminal(make_account(name="a-mycrm", kind=MYCRM), agent=agent, extension="201")
    second = make_terminal(make_account(name="b-enduser", kind=ENDUSER), agent=agent, extension="201")
    return agent, first, second


def choose(agent, terminal):
    agent.dialling_terminal = terminal
    agent.save()


def test_it_dials_from_the_console_through_the_terminal_the_admin_chose(pbx, agent_on_two_accounts):
    agent, _first, second = agent_on_two_accounts
    choose(agent, second)
    console.dial(console.Viewer(agent.user, agent), "+33612345678")
    assert pbx.placed == [(second.pbx_id, "+33612345678")]


def test_it_falls_back_to_the_rule_when_the_chosen_terminal_is_no_longer_usable(pbx, agent_on_two_accounts):
    agent, first, second = agent_on_two_accounts
    choose(agent, second)
    for unusable in (
        lambda: type(second).objects.filter(pk=second.pk).update(active=False),
        lambda: type(second).objects.filter(pk=second.pk).update(agent=make_agent()),
        lambda: PbxAccount.objects.filter(pk=second.account_id).update(enabled=False),
    ):
        type(second).objects.filter(pk=second.pk).update(active=True, agent=agent)
        PbxAccount.objects.filter(pk=second.account_id).update(enabled=True)
        assert control.dialling_terminal(agent) == second
        unusable()
        assert control.dialling_terminal(agent) == first


def test_it_prefers_an_account_with_call_control_then_the_account_name_when_none_is_chosen(agent_on_two_accounts):
    agent, first, _second = agent_on_two_accounts
    assert control.dialling_terminal(agent) == first  # both only dial: the account name decides
    controlled = make_terminal(make_account(name="z-myrcc", kind=MYRCC), agent=agent, extension="201")
    assert control.dialling_terminal(agent) == controlled  # myRCC can hold and transfer the call it places
    assert control.dialling_terminal(agent, [first.account_id]) == first  # an integration serving only a-...


def test_it_dials_from_nowhere_without_a_usable_terminal(pbx):
    agent = make_agent()
    make_terminal(make_account(), agent=agent, active=False)
    assert control.dialling_terminal(agent) is None
    with pytest.raises(control.NoTerminal):
        console.dial(console.Viewer(agent.user, agent), "+33612345678")
    assert pbx.placed == []
