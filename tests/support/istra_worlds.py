"""Istra worlds the browser tests share, set up in the simulator and in ctihub's database at once."""

from __future__ import annotations

from telephony import control
from telephony.models import Listener, PbxAccount
from tests.factories import make_account, make_agent
from tests.support.processes import wait_for
from tests.support.sim_control import IstraControl

MYRCC_EXTENSION = "897778778"


def myrcc_world(hub, *, listening: bool = True):
    """One myRCC enterprise with one extension, 101 (John Doe), given to agent jdoe: (sim, account, agent).

    ``listening``: wait for the worker's listener to connect (a hub started without workers has none)."""
    sim = IstraControl(hub.sim_url)
    sim.add_user("rccadmin", "s3cret", enterprise="acme", myrcc=True)
    sim.add_extension(MYRCC_EXTENSION, "101", enterprise="acme", label="John Doe", myrcc=True)
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=f"{hub.sim_url}/restletrouter",
                           login="rccadmin", password="s3cret", enterprise="acme")
    control.sync_terminals(account)
    agent = make_agent("jdoe")
    account.terminals.filter(pbx_id=MYRCC_EXTENSION).update(agent=agent)
    if listening:
        wait_for(lambda: Listener.objects.filter(account=account, state="connected").exists(), 30,
                 what="the listener")
    return sim, account, agent
