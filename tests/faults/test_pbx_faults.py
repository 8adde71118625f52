"""PBX sockets failing under steady calls, for every Istra kind at once: every call still ends once, right.

Sockets cut or closed, pings unanswered (a half-open path, or pongs missing while frames still come), and
garbage frames. The world, the report and the test body are ``tests/faults/istra_world.py``'s (shared with
``test_pbx_session_faults.py``: sessions, 503s and outages, on a hub of their own).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.faults.harness import istra_fault_settings
from tests.faults.istra_world import istra_world, report_path, run
from tests.support.recorded import late_mycrm_drop

# Generous: the hub starts with the first test, and a loaded 2-core machine settles slowly.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(300)]

# The module's hub (tests/faults/conftest.py fault_hub) runs with these settings.
HUB_SETTINGS = istra_fault_settings


@pytest.fixture(scope="module")
def fault_world(fault_hub):
    return istra_world(fault_hub, report_path(__name__))


def test_it_keeps_every_call_of_every_kind_when_the_pbx_closes_the_sockets_abruptly(request, fault_world):
    run(request, fault_world, 2, lambda faults: faults.inject("pbx_socket_closed"), rounds=3)


def test_it_keeps_every_call_of_every_kind_when_the_pbx_closes_the_sockets_cleanly(request, fault_world):
    run(request, fault_world, 3, lambda faults: faults.inject("pbx_socket_closed_cleanly"))


def test_it_notices_half_open_sockets_of_every_kind_by_their_unanswered_pings(request, fault_world):
    """No pongs and no frames (the path died without a FIN): only the missing pongs tell, within a few
    keep-alive intervals (2 s here)."""
    run(request, fault_world, 4, lambda faults: faults.inject("pings_unanswered", "half_open", silent=True),
        timed=False)


def test_it_keeps_every_call_when_the_pbx_stops_answering_pings_but_still_sends_frames(request, fault_world):
    run(request, fault_world, 5,
        lambda faults: faults.inject("pings_unanswered", "pings_unanswered_with_frames", silent=False),
        rounds=1, timed=False)


def test_it_keeps_every_call_when_every_kind_gets_malformed_and_oversized_frames(request, fault_world):
    run(request, fault_world, 6, lambda faults: faults.inject("garbage_frames"), timed=False)


def test_it_ends_every_call_by_its_own_drop_when_fields_carry_values_the_docs_do_not_show(request, fault_world):
    """A duration of "-1", a time as ISO text, a label as a list: each read as absent, the event applies. Had one
    odd field cost the whole event, myRCC's calls would be lost and myCrm's drops with them (their calls then
    ended by the stale-call sweep, which is a loss of the answered state and the talking time)."""
    from django.utils import timezone

    from telephony.models import Call, CallEvent
    from telephony.providers.istra_enduser.frames import HISTORY_CALL_PREFIX, HISTORY_ENDED_KIND

    started = timezone.now()
    figures, _faults = run(request, fault_world, 7, lambda faults: faults.inject("odd_field_values"),
                           rounds=2, timed=False)
    assert {kind: kind_figures.calls_swept for kind, kind_figures in figures.by_kind.items()
            if kind_figures.calls_swept} == {}
    # Nor repaired from the call history: a myCrm user with an End User account has its lost drops ended by the
    # backfill (a history.ended event) or its lost calls stored from it, which the figures count as kept.
    socket_accounts = [group.socket_account_id for group in fault_world.groups if group.socket_account_id]
    both = [group.history_account_id for group in fault_world.groups
            if group.socket_account_id and group.history_account_id]
    assert CallEvent.objects.filter(kind=HISTORY_ENDED_KIND, received_at__gte=started,
                                    call__account_id__in=socket_accounts).count() == 0
    assert Call.objects.filter(account_id__in=both, pbx_call_id__startswith=HISTORY_CALL_PREFIX,
                               created_at__gte=started).count() == 0


def test_it_takes_a_mycrm_drop_that_comes_after_the_backfill_for_the_call_it_stored(fault_world):
    """A myCrm socket lost a call's frames; the End User backfill stored the call from the call history; then
    the socket's drop of that call came (a PBX that delivers it late, a worker far behind). One call, not two:
    each would reach retailCRM."""
    from telephony.models import Call, CallEvent, Listener
    from telephony.providers.istra_mycrm.transport import LISTENER_PREFIX
    from tests.faults.harness import MYCRM_HISTORY, _queue_tasks, beat_tasks
    from tests.support.processes import wait_for

    group = next(group for group in fault_world.groups if group.kind == MYCRM_HISTORY)
    seat, istra = group.seats[0], fault_world.istra
    name = f"{LISTENER_PREFIX}{seat.extension_id}"
    listener = Listener.objects.get(account_id=group.socket_account_id, name=name)
    reconnects = listener.reconnects
    number = "+33612340977"
    # The socket's path dies without a FIN: the call's frames are lost, and only its unanswered pings tell.
    istra.mute_pings(name, silent=True)
    line = istra.incoming(seat.extension_id, number)
    istra.move(line["callId"], "answer")
    answered = time.monotonic()
    time.sleep(1.5)
    istra.move(line["callId"], "hangup", cause="disconnect")
    talked_ms = int((time.monotonic() - answered) * 1000)
    wait_for(lambda: Listener.objects.filter(pk=listener.pk, reconnects__gt=reconnects,
                                             state=Listener.State.CONNECTED).exists(), 60, interval=0.2,
             what="the silent socket to be noticed and replaced")

    def backfilled():
        _queue_tasks(fault_world, beat_tasks(fault_world))  # as beat would, until the entry has settled
        return Call.objects.filter(account_id=group.history_account_id, remote_number_e164=number).first()

    stored = wait_for(backfilled, 60, interval=1.0, what="the call history's backfill to store the call")
    assert stored.pbx_call_id.startswith("history:") and stored.state == Call.State.ENDED
    # The drop the PBX sent when the call ended (a recorded one, for this call), on the socket that replaced the
    # silent one.
    frame = late_mycrm_drop(line["callId"], number, talked_ms, listener=name)
    assert istra.push_frame(json.dumps(frame), listener=name)["sockets"] == 1
    second = Call.objects.filter(account_id=group.socket_account_id, pbx_call_id=line["callId"])
    wait_for(lambda: CallEvent.objects.filter(call=stored, kind="callDropped").exists() or second.exists(), 30,
             interval=0.2, what="the drop to be applied")
    assert not second.exists(), "the drop was stored as a second call"
    assert CallEvent.objects.filter(call=stored, kind="callDropped").exists()
    assert Call.objects.filter(remote_number_e164=number).count() == 1
