"""The simulator's world: everything the simulated vendors know, in memory."""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.istra.world import IstraWorld
from simulator.retailcrm.world import RetailCrmWorld
from simulator.telepo.world import TelepoWorld


@dataclass
class SimulatorState:
    systems: set[str] = field(default_factory=lambda: {"istra"})
    # Centile Istra: myCrm and myRCC (and later myIstra) share one platform.
    istra: IstraWorld = field(default_factory=IstraWorld)
    retailcrm: RetailCrmWorld = field(default_factory=RetailCrmWorld)
    telepo: TelepoWorld = field(default_factory=TelepoWorld)

