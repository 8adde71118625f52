"""Reconnecting to myRCC: calls that ended while the socket was down end in ctihub too (found by tests/faults)."""

from __future__ import annotations

import pytest

from telephony.domain import apply_call_updates
from telephony.models import Call
from telephony.providers.istra_myrcc.tests.test_transport import ALICE, BOB, account, provider, world  # noqa: F401

pytestmark = pytest.mark.django_db


def connect_and_catch_up(provider):
    (spec,) = provider.listener_specs([])
    stream = provider.open_stream(spec)
    try:
        for text in stream.initial_frames:
            apply_call_updates(provider.parse_frame(text, spec))
    finally:
        provider.close_stream(spec, stream)


def test_it_ends_a_call_that_was_answered_and_hung_up_while_the_socket_was_down(provider, world):
    ringing = world.incoming_call(ALICE, "0612345678").line_id
    still_up = world.incoming_call(BOB, "0699999999").line_id
    connect_and_catch_up(provider)  # ctihub sees both ringing, then loses the socket
    world.answer(ringing)
    world.hangup(ringing, "disconnect")

    connect_and_catch_up(provider)

    ended = Call.objects.get(pbx_call_id=ringing)
    assert (ended.state, ended.answered_at is not None, ended.end_cause) == ("ended", True, "hangup")
    assert Call.objects.get(pbx_call_id=still_up).state == "ringing"


def test_it_ends_a_call_the_pbx_no_longer_knows(provider, world):
    gone = world.incoming_call(ALICE, "0612345678").line_id
    connect_and_catch_up(provider)
    world.calls.lines.pop(gone)  # the PBX restarted and forgot the line

    connect_and_catch_up(provider)

    call = Call.objects.get(pbx_call_id=gone)
    assert (call.state, call.answered_at, call.end_cause) == ("ended", None, "no_answer")
