"""The card a browser is told about a call."""

import pytest

from telephony.cards import call_card
from tests.factories import make_account, make_call

pytestmark = pytest.mark.django_db


def test_it_shows_a_state_the_pbx_named_that_we_do_not_know_next_to_the_state_kept():
    call = make_call(make_account(), state="talking", pbx_state="conferenced")
    card = call_card(call, extras={})
    assert (card["state"], card["pbx_state"]) == ("talking", "conferenced")
    call.pbx_state = ""
    assert call_card(call, extras={})["pbx_state"] == ""
