"""retailCRM's click-to-call through an End User account: the shop's number presented as the caller-ID.

The CRM side over the End User provider (the layer above it): the provider's own caller-ID tests stay in
its folder and name no CRM.
"""

from __future__ import annotations

import pytest

from crm_sync import domain as crm_domain
from telephony.providers.istra_enduser.tests.test_callerid import (  # noqa: F401 (fixtures)
    SHOP,
    TERMINAL,
    caller_id_at_pbx,
    queued,
    setup,
)
from tests.simulator.conftest import running_simulator, sim  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


def test_retailcrm_click_to_call_presents_the_shop_and_places_the_call(setup, integration, crm):  # noqa: F811
    sim, enduser, socket_terminal, agent = setup
    answer = crm_domain.make_call(integration, agent, "+33612345678", SHOP)
    assert answer["callerIdPresented"] is True
    assert caller_id_at_pbx(sim)["customCallerID"] == SHOP
    [line] = sim.state.istra.calls.lines.values()
    assert (line.extension_id, line.destination) == (TERMINAL, "+33612345678")
