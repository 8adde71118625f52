"""The demo enterprise and its traffic: what `./scripts/run` shows a newcomer without a real PBX.

``seed(state)`` gives the simulated Istra platform a myRCC enterprise with a few
extensions, and the simulated retailCRM the API key, users, shop and customers
that go with it. ``DemoTraffic`` then plays calls against that enterprise at a
steady, human rate: most are answered, some are held and resumed, some are
transferred to a colleague, some are missed. It uses the same world methods as
the control API, so the hub sees exactly what a real PBX would push.

The credentials here are the simulator's own (a fake PBX on 127.0.0.1); ctihub's
demo seeding (``simulator.hub_demo``) uses the same constants to point an account at it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from simulator.istra.calls import ActionRefused, InvalidTransition
from simulator.state import SimulatorState

logger = logging.getLogger("simulator.demo")

ENTERPRISE = "demo"
RCC_LOGIN = "demo-rcc"
RCC_PASSWORD = "demo-rcc-password"
RETAILCRM_API_KEY = "demo-retailcrm-api-key"
SHOP = "demo-shop"
SHOP_PHONE = "+33170000000"


@dataclass(frozen=True)
class DemoAgent:
    username: str
    extension_id: str
    number: str
    label: str
    retailcrm_user_id: str


AGENTS = (
    DemoAgent("alice", "5985841581756135001", "101", "Alice Martin", "1"),
    DemoAgent("bruno", "5985841581756135002", "102", "Bruno Petit", "2"),
    DemoAgent("chloe", "5985841581756135003", "103", "Chloé Durand", "3"),
    DemoAgent("david", "5985841581756135004", "104", "David Leroy", "4"),
)
CUSTOMERS = (
    ("11", "Jeanne", "Moreau", "+33612345601", "1"),
    ("12", "Paul", "Girard", "+33612345602", "2"),
    ("13", "Lina", "Roux", "+33612345603", None),
    ("14", "Omar", "Faure", "+33612345604", "3"),
)


def seed(state: SimulatorState) -> None:
    istra = state.istra
    istra.add_user(RCC_LOGIN, RCC_PASSWORD, enterprise=ENTERPRISE, mycrm=False, myrcc=True)
    for agent in AGENTS:
        istra.add_extension(agent.extension_id, agent.number, enterprise=ENTERPRISE, label=agent.label, myrcc=True)
    crm = state.retailcrm
    crm.add_api_key(RETAILCRM_API_KEY)
    crm.add_site(SHOP, "Demo shop")
    for agent in AGENTS:
        first, last = agent.label.split(" ", 1)
        crm.add_user(agent.retailcrm_user_id, first_name=first, last_name=last)
    for customer_id, first, last, phone, manager in CUSTOMERS:
        crm.add_customer(customer_id, phones=[phone], first_name=first, last_name=last, manager_id=manager)
    state.systems.add("demo")


class DemoTraffic:
    """Calls at a steady rate: ``calls_per_minute`` new calls, each living its own little story."""

    def __init__(self, state: SimulatorState, calls_per_minute: float = 6.0, rng: random.Random | None = None):
        self.state = state
        self.interval = 60.0 / calls_per_minute
        self.rng = rng or random.Random()
        self.started = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval * self.rng.uniform(0.5, 1.5))
            free = [a for a in AGENTS if not self.state.istra.calls.live_lines(a.extension_id)]
            if free:
                asyncio.ensure_future(self._one_call(self.rng.choice(free)))

    async def _one_call(self, agent: DemoAgent) -> None:
        istra, rng = self.state.istra, self.rng
        self.started += 1
        caller = rng.choice(CUSTOMERS)[3] if rng.random() < 0.7 else f"+336{rng.randrange(10**7, 10**8)}"
        try:
            line = istra.incoming_call(agent.extension_id, caller)
            await asyncio.sleep(rng.uniform(2, 6))
            if rng.random() < 0.2:
                istra.hangup(line.line_id, "disconnect")  # the caller gave up: a missed call
                return
            istra.answer(line.line_id)
            await asyncio.sleep(rng.uniform(3, 10))
            if rng.random() < 0.3:
                istra.hold(line.line_id)
                await asyncio.sleep(rng.uniform(2, 5))
                istra.unhold(line.line_id)
                await asyncio.sleep(rng.uniform(2, 6))
            if rng.random() < 0.15:
                colleague = rng.choice([a for a in AGENTS if a is not agent])
                istra.calls.act(line, "redirect", {"destination": colleague.number})
                return  # the colleague's phone rings now; they are left to answer in the console
            istra.hangup(line.line_id, "disconnect")
        except (KeyError, ActionRefused, InvalidTransition) as exc:
            # The agent acted from the console meanwhile (hung up, transferred): the story ends there.
            logger.debug("demo call ended early: %s", exc)
