"""Reconnecting to myRCC: calls that ended while the socket was down end in ctihub too (found by tests/faults)."""

from __future__ import annotations

import pytest

from simulator.istra import variance
from telephony.domain import apply_call_updates
from telephony.models import Call
from telephony.providers import provider_for
from telephony.providers.base import ProviderError
from telephony.providers.istra_myrcc import tasks
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
    world.calls.forget(gone)  # the PBX restarted and forgot the line

    connect_and_catch_up(provider)

    call = Call.objects.get(pbx_call_id=gone)
    assert (call.state, call.answered_at, call.end_cause) == ("ended", None, "no_answer")


# --- a line that cannot be pulled never keeps the listener from connecting ------------------------------------

@pytest.fixture
def scheduled(monkeypatch):
    """The retries the catch-up asks for, instead of queuing them on Celery."""
    asked = []
    monkeypatch.setattr(tasks, "schedule_pull", lambda account_id, line_ids, attempt=0: asked.append(
        (account_id, list(line_ids), attempt)) or True)
    return asked


def ended_at_the_pbx_while_away(provider, world) -> tuple[str, str]:
    """Two calls ctihub saw ringing, both hung up while its socket was down."""
    first = world.incoming_call(ALICE, "0612345678").line_id
    second = world.incoming_call(BOB, "0699999999").line_id
    connect_and_catch_up(provider)
    for line_id in (first, second):
        world.answer(line_id)
        world.hangup(line_id, "disconnect")
    return first, second


@pytest.mark.parametrize("status", [500, 503])
def test_it_connects_and_settles_the_other_calls_when_one_line_cannot_be_pulled(provider, world, sim, scheduled,
                                                                                 status):
    stuck, settled = ended_at_the_pbx_while_away(provider, world)
    variance.unpullable_lines(world, [stuck], status)

    connect_and_catch_up(provider_for(provider.account))  # before: ProviderError, on every reconnect

    assert Call.objects.get(pbx_call_id=settled).state == "ended"
    assert Call.objects.get(pbx_call_id=stuck).state == "ringing"  # left as it was, not guessed
    assert scheduled == [(provider.account.pk, [stuck], 0)]


def test_it_ends_at_once_a_call_whose_line_the_full_list_left_out_and_a_get_does_not_find(provider, world,
                                                                                         scheduled):
    # The spec has no GET of one line: a PBX without it answers 404 to every one. Asked again for 40 minutes, the
    # call stayed live until the next reconnect or the stale-call sweep, hours for a talking call.
    gone, settled = ended_at_the_pbx_while_away(provider, world)
    variance.unpullable_lines(world, [gone], 404)

    connect_and_catch_up(provider_for(provider.account))

    assert [Call.objects.get(pbx_call_id=line_id).state for line_id in (gone, settled)] == ["ended", "ended"]
    assert scheduled == []  # nothing left to ask again


def test_it_pulls_the_line_again_later_and_ends_its_call_as_it_ended(provider, world, scheduled):
    stuck, _ = ended_at_the_pbx_while_away(provider, world)
    variance.unpullable_lines(world, [stuck], 500)
    connect_and_catch_up(provider_for(provider.account))

    tasks.pull_lines_task(provider.account.pk, [stuck], 0)  # the PBX still refuses: another try is queued
    assert Call.objects.get(pbx_call_id=stuck).state == "ringing"
    assert scheduled[-1] == (provider.account.pk, [stuck], 1)

    variance.unpullable_lines(world, [stuck], None)
    assert tasks.pull_lines_task(provider.account.pk, [stuck], 1) == {"changed": 1, "unpulled": []}
    call = Call.objects.get(pbx_call_id=stuck)
    assert (call.state, call.answered_at is not None, call.end_cause) == ("ended", True, "hangup")
    assert len(scheduled) == 2
    before = len(world.requests_received())
    assert tasks.pull_lines_task(provider.account.pk, [stuck], 2) == {"changed": 0, "unpulled": []}  # ended now
    assert len(world.requests_received()) == before


def test_it_gives_up_retrying_after_the_last_delay(provider, world, monkeypatch):
    queued = []
    monkeypatch.setattr(tasks, "enqueue", lambda *args, **kwargs: queued.append((args, kwargs)) or True)
    assert tasks.schedule_pull(provider.account.pk, ["-1"], 0)
    assert queued == [((tasks.pull_lines_task, provider.account.pk, ["-1"], 0), {"countdown": 15})]
    assert not tasks.schedule_pull(provider.account.pk, ["-1"], len(tasks.PULL_RETRY_DELAYS))


def test_it_does_not_ask_for_the_other_lines_once_the_pbx_stopped_answering(provider, monkeypatch):
    asked = []

    def unreachable(line_id, relogin):
        asked.append(line_id)
        raise ProviderError("cannot reach the Istra server: timed out")

    monkeypatch.setattr(provider, "_last_snapshot", unreachable)
    assert provider.pull_lines(["-1", "-2", "-3"]) == ([], ["-1", "-2", "-3"])
    assert asked == ["-1"]


def test_it_still_starts_over_when_the_listeners_session_expired_during_the_catch_up(provider, world):
    gone = world.incoming_call(ALICE, "0612345678").line_id
    connect_and_catch_up(provider)
    world.hangup(gone, "disconnect")
    world.fail_next(1, 401, {"code": "ROUTER_ERR_401", "message": "session expired"}, path=f"CallLine/{gone}")
    with pytest.raises(ProviderError):
        connect_and_catch_up(provider_for(provider.account))


# --- a state the spec never shows, after a reconnect ----------------------------------------------------------

def test_it_keeps_each_call_in_its_state_when_the_list_shows_a_state_the_spec_does_not(provider, world, sim):
    talking = world.incoming_call(ALICE, "0612345678").line_id
    world.answer(talking)
    ringing = world.incoming_call(BOB, "0699999999").line_id
    connect_and_catch_up(provider)
    variance.line_state(world, talking, "conferenced")
    variance.line_state(world, ringing, "offering")
    new = world.incoming_call(ALICE, "0677777777").line_id
    variance.line_state(world, new, "offering")

    connect_and_catch_up(provider_for(provider.account))  # a new connection knows the states from the database

    states = dict(Call.objects.values_list("pbx_call_id", "state"))
    assert states == {talking: "talking", ringing: "ringing", new: "ringing"}  # before: the whole list rejected
    assert Call.objects.get(pbx_call_id=talking).events.order_by("id").last().kind == "callLine.conferenced"


def test_it_reads_a_pbx_that_spells_ringing_alerting(provider, world):
    variance.state_names(world, {"ringing": "alerting"})
    line = world.incoming_call(ALICE, "0612345678").line_id
    connect_and_catch_up(provider)
    call = Call.objects.get(pbx_call_id=line)
    assert (call.state, call.direction) == ("ringing", "in")
