"""The stale-call sweep: a call the PBX went silent on is ended (as "swept") through the domain, once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from telephony import updates as u
from telephony.domain import apply_call_update
from telephony.models import Call, CallEvent
from telephony.sweep import SWEPT_KIND, sweep_stale_calls
from tests.factories import make_account
from tests.test_settings import import_settings

pytestmark = pytest.mark.django_db

NOW = timezone.now().replace(microsecond=0)
BOUNDS = {"ringing": 60, "dialing": 70, "talking": 80, "held": 90}  # seconds, each state its own


@pytest.fixture(autouse=True)
def bounds(settings):
    for state, seconds in BOUNDS.items():
        setattr(settings, f"CALL_STALE_{state.upper()}_SECONDS", seconds)


@pytest.fixture
def account(db):
    return make_account(default_region="FR")


def frame(account, state, kind, at, pbx_call_id="-428", **fields) -> u.CallUpdate:
    return u.CallUpdate(account_id=account.pk, pbx_call_id=pbx_call_id, state=state, kind=kind,
                        payload={"event": kind}, occurred_at=at, **fields)


def live_call(account, state: str, last_news_ago: float, pbx_call_id="-428", **fields) -> Call:
    """A call in ``state`` whose last frame was applied ``last_news_ago`` seconds before NOW."""
    last_news = NOW - timedelta(seconds=last_news_ago)
    start = u.DIALING if state == u.DIALING else u.RINGING
    apply_call_update(frame(account, start, "callRinging", last_news - timedelta(seconds=5), pbx_call_id,
                            direction=u.OUTBOUND if start == u.DIALING else u.INBOUND, **fields))
    if state in (u.TALKING, u.HELD):
        apply_call_update(frame(account, u.TALKING, "callTalking", last_news - timedelta(seconds=2), pbx_call_id))
    if state == u.HELD:
        apply_call_update(frame(account, u.HELD, "callHeld", last_news, pbx_call_id))
    call = Call.objects.get(account=account, pbx_call_id=pbx_call_id)
    assert call.state == state
    Call.objects.filter(pk=call.pk).update(updated_at=last_news)  # as the domain stamped it then
    call.refresh_from_db()
    return call


@pytest.mark.parametrize("state", [u.RINGING, u.DIALING, u.TALKING, u.HELD])
def test_it_sweeps_a_call_without_news_past_its_states_bound_and_not_a_younger_one(account, state):
    bound = BOUNDS[state]
    stale = live_call(account, state, bound + 1, pbx_call_id="-1")
    fresh = live_call(account, state, bound - 1, pbx_call_id="-2")
    assert sweep_stale_calls(now=NOW) == [stale.pk]
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert (stale.state, stale.end_cause) == (Call.State.ENDED, u.END_SWEPT)
    assert (fresh.state, fresh.end_cause) == (state, "")


def test_it_ends_a_swept_call_with_what_is_known_publishes_it_and_hands_it_to_the_crm(
    account, published, committed, django_capture_on_commit_callbacks,
):
    call = live_call(account, u.TALKING, 3600)
    answered_at, last_news = call.answered_at, call.updated_at
    with django_capture_on_commit_callbacks(execute=True):
        assert sweep_stale_calls(now=NOW) == [call.pk]
    call.refresh_from_db()
    assert (call.state, call.end_cause, call.allowed_actions) == (Call.State.ENDED, u.END_SWEPT, [])
    assert call.answered_at == answered_at  # it was seen answered
    assert call.ended_at == last_news  # when it was last known alive: its real end is unknown
    assert call.talking_ms == int((last_news - answered_at).total_seconds() * 1000)
    assert call.events.last().kind == SWEPT_KIND
    assert published == [call.pk]
    assert committed == [[(call.pk, Call.State.ENDED)]]  # the core's hook, which the CRM side listens to

    with django_capture_on_commit_callbacks(execute=True):
        assert sweep_stale_calls(now=NOW + timedelta(hours=1)) == []  # swept once
    assert published == [call.pk] and len(committed) == 1


def test_it_takes_a_start_frame_for_a_swept_calls_id_as_a_new_call_at_once(account):
    swept = live_call(account, u.RINGING, 61)
    sweep_stale_calls(now=NOW)
    # The PBX reuses the id seconds after the sweep (well within CALL_ID_RECYCLE_AFTER of the swept end).
    new = apply_call_update(frame(account, u.RINGING, "callRinging", NOW + timedelta(seconds=1)))
    assert new.changed and new.call.pk != swept.pk
    swept.refresh_from_db()
    assert swept.pbx_call_id == f"-428#{swept.pk}" and swept.end_cause == u.END_SWEPT
    assert (new.call.pbx_call_id, new.call.state) == ("-428", Call.State.RINGING)

    # And the new call can be swept in its turn: its sweep is no replay of the first one's.
    Call.objects.filter(pk=new.call.pk).update(updated_at=NOW - timedelta(seconds=1))
    assert sweep_stale_calls(now=NOW + timedelta(seconds=BOUNDS["ringing"])) == [new.call.pk]
    assert Call.objects.get(pk=new.call.pk).end_cause == u.END_SWEPT


def test_it_ignores_a_late_drop_of_a_swept_call(account):
    # The sweep's end already went to retailCRM: a late word from the PBX does not rewrite it.
    call = live_call(account, u.RINGING, 61)
    sweep_stale_calls(now=NOW)
    late = apply_call_update(frame(account, u.ENDED, "callDropped", NOW + timedelta(seconds=1),
                                   end_cause=u.END_HANGUP, talking_ms=5000))
    assert not late.changed
    call.refresh_from_db()
    assert (call.end_cause, call.talking_ms, call.answered_at) == (u.END_SWEPT, 0, None)
    assert CallEvent.objects.filter(call=call).count() == 2


def test_it_leaves_ended_calls_alone(account):
    apply_call_update(frame(account, u.RINGING, "callRinging", NOW - timedelta(hours=2)))
    apply_call_update(frame(account, u.ENDED, "callDropped", NOW - timedelta(hours=2)))
    Call.objects.update(updated_at=NOW - timedelta(hours=2))
    assert sweep_stale_calls(now=NOW) == []


def test_the_beat_runs_the_sweep_task_every_call_sweep_seconds(account):
    from telephony.tasks import sweep_stale_calls_task

    entry = django_settings.CELERY_BEAT_SCHEDULE["call-stale-sweep"]
    assert entry == {"task": sweep_stale_calls_task.name, "schedule": float(django_settings.CALL_SWEEP_SECONDS)}
    assert sweep_stale_calls_task.name == "telephony.tasks.sweep_stale_calls_task"
    live_call(account, u.RINGING, 3600)
    assert sweep_stale_calls_task() == 1


def test_its_settings_default_sensibly_and_refuse_a_zero_bound(tmp_path):
    script = ("import ctihub.settings as s; print(s.CALL_SWEEP_SECONDS, s.CALL_STALE_RINGING_SECONDS, "
              "s.CALL_STALE_DIALING_SECONDS, s.CALL_STALE_TALKING_SECONDS, s.CALL_STALE_HELD_SECONDS)")
    defaults = import_settings(script, CTIHUB_VAR_DIR=str(tmp_path))
    assert defaults.returncode == 0, defaults.stderr
    assert defaults.stdout.split() == ["30", "900", "900", "14400", "7200"]
    refused = import_settings(script, CTIHUB_VAR_DIR=str(tmp_path), CALL_STALE_HELD_SECONDS="0")
    assert refused.returncode != 0 and "CALL_STALE_HELD_SECONDS=0 must be at least 1" in refused.stderr


# What retailCRM hears of a swept call: crm_sync/tests/test_sync.py (the layer above).


# --- what the admin sees --------------------------------------------------------------------------


def test_the_admin_filters_calls_by_end_cause_with_a_readable_swept(admin_client, account):
    from django.urls import reverse

    from telephony.models import PbxAccount

    swept = live_call(account, u.RINGING, 61, pbx_call_id="-1")
    live_call(account, u.RINGING, 1, pbx_call_id="-2")
    sweep_stale_calls(now=NOW)
    changelist = reverse("admin:telephony_call_changelist")
    page = admin_client.get(changelist, {"end_cause": u.END_SWEPT})
    assert page.status_code == 200
    assert "Swept (no news from the PBX)" in page.content.decode()
    assert [call.pk for call in page.context["cl"].result_list] == [swept.pk]

    # The myCrm account says what ends a call whose end its socket missed.
    note = admin_client.get(reverse("admin:telephony_pbxaccount_change", args=[account.pk])).content.decode()
    assert "No enabled End User account with this login on this server" in note
    make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, name="Chatfield history", login=account.login)
    note = admin_client.get(reverse("admin:telephony_pbxaccount_change", args=[account.pk])).content.decode()
    assert "call history of the End User account &#x27;Chatfield history&#x27;" in note
