"""A card whose publish was lost still reaches the console, through a real daphne, Redis and PostgreSQL.

The call is committed by this process with its publish swallowed (the ``published`` fixture), as when a
worker is killed between its commit and its publish: only the console's resync can bring the card.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from telephony import updates as u
from telephony.domain import apply_call_update
from tests.factories import make_account, make_agent, make_terminal
from tests.support.consoles import Console

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def hub_settings():
    return {"CONSOLE_RESYNC_SECONDS": "1"}


def test_it_brings_a_card_whose_publish_was_lost_to_the_agents_console_once(hub, published):
    hub.start(workers=0, web=True)
    account = make_account()
    agent = make_agent()
    make_terminal(account, pbx_id="t-1", agent=agent)
    console = Console(hub, agent)
    try:
        call = apply_call_update(u.CallUpdate(
            account_id=account.pk, pbx_call_id="-1", state=u.RINGING, kind="callAlerting", payload={},
            occurred_at=timezone.now(), terminal_pbx_id="t-1", direction=u.INBOUND, remote_number="+33412345670",
        )).call
        assert published == [call.pk], "the card was never published"
        card = console.card("ringing")  # the resync: 1 s period, changes older than 3 s
        assert (card["id"], card["version"], card["agent"]) == (call.pk, 1, agent.pk)
        later = [c for c in console.cards(listen=3) if c["id"] == call.pk]
        assert len(later) == 1, f"sent {len(later)} times"
    finally:
        console.close()
