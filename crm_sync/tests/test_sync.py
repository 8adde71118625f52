"""Call events and the upload outbox against the real simulated retailCRM (no Celery: services directly)."""

from __future__ import annotations

import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from django.utils import timezone

from crm_sync import domain as crm_domain
from crm_sync.models import CrmCallSync
from crm_sync.retailcrm import payloads
from telephony import updates as u
from telephony.models import Call
from telephony.sweep import sweep_stale_calls
from telephony.tests.test_sweep import NOW, live_call
from tests.factories import make_account, make_agent, make_call, make_terminal

pytestmark = pytest.mark.django_db


def ringing(world, **fields) -> Call:
    defaults = dict(
        terminal=world.terminal, agent=world.agent, direction=Call.Direction.INBOUND, state=Call.State.RINGING,
        remote_number_e164="+33412345670", remote_number_raw="0412345670", external_phone="+74999999999",
        created_at=timezone.now() - timedelta(seconds=20),
    )
    return make_call(world.account, **{**defaults, **fields})


def end(call: Call, answered: bool = True, **fields) -> Call:
    now = timezone.now()
    values = dict(state=Call.State.ENDED, ended_at=now, end_cause=u.END_HANGUP if answered else u.END_NO_ANSWER,
                  answered_at=now - timedelta(seconds=10) if answered else None, ringing_ms=10000,
                  talking_ms=10000 if answered else 0)
    values.update(fields)
    Call.objects.filter(pk=call.pk).update(**values)
    call.refresh_from_db()
    return call


def row_of(call, world) -> CrmCallSync:
    return CrmCallSync.objects.get(call=call, integration=world.integration)


# --- events: exactly once, in order ------------------------------------------------------------


def test_it_sends_the_in_event_and_the_hangup_event_once_each_however_often_it_runs(world):
    call = ringing(world)
    for _ in range(3):
        crm_domain.sync_call(call.pk)
    end(call)
    for _ in range(3):
        crm_domain.sync_call(call.pk)
    events = world.crm.events()
    assert [e["type"] for e in events] == ["in", "hangup"]
    assert events[0] == {"type": "in", "phone": "+33412345670", "codes": ["100"], "userIds": [7], "site": "shop1",
                         "externalPhone": "+74999999999", "callExternalId": f"ctihub-{call.pk}"}
    assert events[1]["hangupStatus"] == "answered"
    row = row_of(call, world)
    assert row.in_event_sent_at and row.hangup_event_sent_at and not row.events_claim


def test_it_sends_the_start_event_before_the_hangup_of_a_call_that_ended_quickly(world):
    call = end(ringing(world), answered=False)
    report = crm_domain.sync_call(call.pk)
    assert report.sent == ["in", "hangup"]
    assert [(e["type"], e.get("hangupStatus")) for e in world.crm.events()] == [("in", None), ("hangup", "no answered")]


def test_it_leaves_the_events_to_the_worker_holding_the_claim(world):
    call = ringing(world)
    row = CrmCallSync.objects.create(integration=world.integration, call=call,
                                     events_claimed_until=timezone.now() + timedelta(minutes=1), events_claim="other")
    with pytest.raises(crm_domain.EventsBusy):
        crm_domain.sync_call(call.pk)
    assert world.crm.events() == []
    CrmCallSync.objects.filter(pk=row.pk).update(events_claimed_until=timezone.now() - timedelta(seconds=1))
    crm_domain.sync_call(call.pk)  # an expired claim (its worker died) is taken over
    assert [e["type"] for e in world.crm.events()] == ["in"]


@pytest.mark.django_db(transaction=True)  # a dropped connection cannot live inside the test's transaction
def test_it_frees_the_events_claim_when_the_database_drops_the_connection_after_the_claim(world, monkeypatch):
    # Seen in the database-drop fault test: the claim committed, then PostgreSQL terminated the
    # connection, and the release failed on it too: the claim held the call's events for CLAIM_LEASE,
    # and by then its start event was stale, so retailCRM never heard of the call.
    from django.db import OperationalError, connections

    call = ringing(world)
    real_due_event = crm_domain._due_event

    def due_event_on_a_dropped_connection(row, call):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        finally:
            other.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")  # the connection is gone: OperationalError
        return real_due_event(row, call)

    monkeypatch.setattr(crm_domain.events, "_due_event", due_event_on_a_dropped_connection)
    with pytest.raises(OperationalError):
        crm_domain.sync_call(call.pk)
    monkeypatch.setattr(crm_domain.events, "_due_event", real_due_event)
    row = row_of(call, world)
    assert row.events_claim == "" and row.events_claimed_until is None
    assert crm_domain.sync_call(call.pk).sent == ["in"]  # at once, not after the claim's lease


def test_it_takes_an_event_that_got_no_answer_as_delivered_and_never_resends_it(world, caplog):
    call = ringing(world)
    CrmCallSync.objects.create(integration=world.integration, call=call, events_in_flight="in")
    end(call)
    crm_domain.sync_call(call.pk)
    assert [e["type"] for e in world.crm.events()] == ["hangup"]
    row = row_of(call, world)
    assert row.in_event_sent_at is not None and row.events_in_flight == ""
    assert "the in event got no answer from retailCRM; taken as delivered, not re-sent" in caplog.text


def test_it_waits_for_an_agent_before_the_start_event_and_skips_calls_nobody_took(world):
    call = ringing(world, agent=None, terminal=None)
    crm_domain.sync_call(call.pk)
    assert world.crm.events() == [] and row_of(call, world).events_skipped == ""
    Call.objects.filter(pk=call.pk).update(agent=world.agent)  # a later frame named the agent
    crm_domain.sync_call(call.pk)
    assert [e["type"] for e in world.crm.events()] == ["in"]

    nobody = end(ringing(world, agent=None, terminal=None, pbx_call_id="-9001"), answered=False)
    crm_domain.sync_call(nobody.pk)
    assert len(world.crm.events()) == 1
    assert row_of(nobody, world).events_skipped == "no agent with a retailCRM code or user id took this call"


def test_it_waits_for_the_callers_number_before_the_start_event_and_skips_calls_that_end_without_one(world):
    # A first message without the number (a Telepo TRYING, a snapshot before the caller id is known) used to
    # skip the call's events for good: the number the next message brought never made a pop-up.
    call = ringing(world, remote_number_e164="", remote_number_raw="")
    crm_domain.sync_call(call.pk)
    assert world.crm.events() == [] and row_of(call, world).events_skipped == ""
    Call.objects.filter(pk=call.pk).update(remote_number_e164="+33412345670", remote_number_raw="0412345670")
    crm_domain.sync_call(call.pk)
    assert [(e["type"], e["phone"]) for e in world.crm.events()] == [("in", "+33412345670")]

    unknown = end(ringing(world, remote_number_e164="", remote_number_raw="", pbx_call_id="-9002"), answered=False)
    crm_domain.sync_call(unknown.pk)
    assert len(world.crm.events()) == 1
    assert row_of(unknown, world).events_skipped == "the other party's number is unknown"


def test_it_sends_no_events_for_internal_calls_or_long_finished_ones(world):
    internal = end(ringing(world, is_internal=True))
    crm_domain.sync_call(internal.pk)
    stale = end(ringing(world), ended_at=timezone.now() - timedelta(minutes=5))
    crm_domain.sync_call(stale.pk)
    assert world.crm.events() == []
    assert row_of(internal, world).events_skipped.startswith("an internal call")
    assert row_of(stale, world).events_skipped == "the call had ended before its start event could be sent"


def test_it_keeps_events_for_later_while_retailcrm_is_down_and_sends_them_once_it_is_back(world):
    call = ringing(world)
    world.crm.configure(down=True)
    with pytest.raises(crm_domain.RetryLater) as retry:
        crm_domain.sync_call(call.pk)
    assert retry.value.delay == crm_domain.backoff(1)
    row = row_of(call, world)
    assert row.in_event_sent_at is None and row.events_attempts == 1 and row.events_next_at > timezone.now()
    assert "Service temporarily unavailable" in row.last_error
    assert Call.objects.get(pk=call.pk).crm_sync_state == Call.CrmSync.FAILED
    world.crm.configure(down=False)
    crm_domain.sync_call(call.pk)
    assert [e["type"] for e in world.crm.events()] == ["in"]
    assert row_of(call, world).last_error == ""


def test_it_retries_an_event_soon_enough_for_the_pop_up_however_often_it_failed(world):
    call = ringing(world)
    world.crm.configure(down=True)
    delays = []
    for _ in range(6):  # 2, 4, 8, then no more than the cap: the call is still fresh for retailCRM
        CrmCallSync.objects.filter(call=call).update(events_next_at=None)
        with pytest.raises(crm_domain.RetryLater) as retry:
            crm_domain.sync_call(call.pk)
        delays.append(retry.value.delay)
    assert delays == [2, 4, 8, crm_domain.EVENT_BACKOFF_CAP, crm_domain.EVENT_BACKOFF_CAP, crm_domain.EVENT_BACKOFF_CAP]
    assert crm_domain.EVENT_BACKOFF_CAP * 3 < crm_domain.START_EVENT_STALE_AFTER.total_seconds()


def test_it_stops_sending_events_retailcrm_refuses(world):
    call = ringing(world)
    world.crm.reset()  # retailCRM forgot the module: it refuses call events (and the key)
    world.crm.add_api_key()
    crm_domain.sync_call(call.pk)
    row = row_of(call, world)
    assert row.events_skipped.startswith("retailCRM refused the in event")
    assert "Telephony integration not found" in row.events_skipped
    crm_domain.register_integration(world.integration)
    end(call)
    crm_domain.sync_call(call.pk)
    assert world.crm.events() == []  # no hangup without the start it would close


def test_it_tags_an_outgoing_click_to_call_with_the_shop_retailcrm_asked_for(world, monkeypatch):
    monkeypatch.setattr("telephony.control.place_call", lambda terminal, number: {})
    crm_domain.make_call(world.integration, world.agent, "+33612345678", "+74999999999")
    call = ringing(world, direction=Call.Direction.OUTBOUND, state=Call.State.DIALING, external_phone="",
                   remote_number_e164="+33612345678")
    crm_domain.sync_call(call.pk)
    event, = world.crm.events()
    assert (event["type"], event["externalPhone"], event["site"]) == ("out", "+74999999999", "shop1")


def test_it_never_sends_an_event_twice_when_two_workers_sync_the_same_call_at_once(transactional_db, crm, settings):
    settings.PUBLIC_BASE_URL = "https://hub.example.com"
    from crm_sync.models import RetailCrmIntegration
    from tests.support.retailcrm_sim import API_KEY

    integration = RetailCrmIntegration.objects.create(name="shop", crm_url=crm.url, api_key=API_KEY)
    crm_domain.register_integration(integration)
    world = SimpleNamespace(integration=integration, crm=crm, account=make_account(),
                            agent=make_agent(extension_code="100", retailcrm_user_id="7"))
    world.terminal = make_terminal(world.account, agent=world.agent)
    crm.configure(delay=0.2)  # a slow retailCRM widens the window in which both could send
    calls = [ringing(world, pbx_call_id=f"-{n}") for n in range(3)]
    errors = []

    def worker():
        try:
            for call in calls:
                try:
                    crm_domain.sync_call(call.pk)
                except crm_domain.EventsBusy:
                    pass
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(e["callExternalId"] for e in crm.events()) == sorted(f"ctihub-{c.pk}" for c in calls)


# --- the outbox ------------------------------------------------------------------------------------


def test_it_uploads_a_finished_call_once_with_its_external_id(world, settings):
    settings.TIME_ZONE = "UTC"
    call = end(ringing(world))
    report = crm_domain.sync_call(call.pk)
    assert report.outboxed == [world.integration.pk]
    assert crm_domain.upload_outbox(world.integration.pk).uploaded == 1
    assert crm_domain.upload_outbox(world.integration.pk).batches == 0  # nothing left
    uploaded = world.crm.calls()[f"ctihub-{call.pk}"]
    assert uploaded == {
        "date": call.created_at.strftime("%Y-%m-%d %H:%M:%S"), "type": "in", "phone": "+33412345670", "code": "100",
        "userId": 7, "result": "answered", "duration": 10, "durationWaiting": 10, "externalId": f"ctihub-{call.pk}",
        "externalPhone": "+74999999999", "site": "shop1",
    }
    assert Call.objects.get(pk=call.pk).crm_sync_state == Call.CrmSync.SYNCED


def test_it_counts_a_call_retailcrm_already_has_as_uploaded_not_as_a_failure(world):
    call = end(ringing(world))
    crm_domain.sync_call(call.pk)
    from crm_sync.retailcrm.client import RetailCrmClient
    from tests.support.retailcrm_sim import API_KEY

    # A previous attempt reached retailCRM, but its worker died before writing it down.
    RetailCrmClient(world.crm.url, API_KEY).upload_calls([{"date": "2026-01-01 00:00:00", "type": "in",
                                                            "phone": "+33412345670", "externalId": f"ctihub-{call.pk}"}])
    report = crm_domain.upload_outbox(world.integration.pk)
    assert (report.uploaded, report.duplicates) == (0, 1)
    row = row_of(call, world)
    assert row.uploaded_at is not None and row.was_duplicate
    assert world.crm.uploads()[-1]["duplicates"] == [f"ctihub-{call.pk}"]


def test_it_uploads_in_batches_of_at_most_50(world):
    rows = []
    for n in range(120):
        call = make_call(world.account, agent=world.agent, direction="out", state="ended",
                         remote_number_e164="+33612345678", ended_at=timezone.now(), end_cause=u.END_NO_ANSWER)
        rows.append(CrmCallSync(integration=world.integration, call=call, outbox_at=timezone.now(),
                                in_event_sent_at=timezone.now()))
    CrmCallSync.objects.bulk_create(rows)
    report = crm_domain.upload_outbox(world.integration.pk)
    assert report.uploaded == 120
    assert [len(upload["calls"]) for upload in world.crm.uploads()] == [50, 50, 20]
    assert len(world.crm.calls()) == 120


def test_it_keeps_legs_that_are_no_customer_call_out_of_the_history(world):
    elsewhere = end(ringing(world, pbx_call_id="-1"), answered=False, end_cause=u.END_ANSWERED_ELSEWHERE)
    internal = end(ringing(world, pbx_call_id="-2", is_internal=True))
    for call in (elsewhere, internal):
        crm_domain.sync_call(call.pk)
    assert crm_domain.upload_outbox(world.integration.pk).batches == 0
    assert row_of(elsewhere, world).upload_skipped == "answered on another phone"
    assert row_of(internal, world).upload_skipped == "an internal call"
    assert Call.objects.get(pk=internal.pk).crm_sync_state == Call.CrmSync.SYNCED


def outbox_through_an_outage(world, count: int) -> list[Call]:
    """``count`` finished calls whose events and upload failed while retailCRM was down (it is still down)."""
    calls = [end(ringing(world, pbx_call_id=f"-{n}")) for n in range(count)]
    world.crm.configure(down=True)
    for call in calls:
        with pytest.raises(crm_domain.RetryLater):
            crm_domain.sync_call(call.pk)
    with pytest.raises(crm_domain.RetryLater):
        crm_domain.upload_outbox(world.integration.pk)
    return calls


def test_it_keeps_the_outbox_while_retailcrm_is_down_and_drains_it_afterwards(world):
    calls = outbox_through_an_outage(world, 3)
    rows = CrmCallSync.objects.filter(call__in=calls)
    assert all(r.uploaded_at is None and r.upload_attempts == 1 and r.upload_next_at for r in rows)
    assert all(not r.upload_claim for r in rows)  # claims released: another worker may try
    world.crm.configure(down=False)
    assert crm_domain.upload_outbox(world.integration.pk).batches == 0  # backing off: not due yet
    rows.update(upload_next_at=timezone.now())
    for call in calls:
        crm_domain.sync_call(call.pk)  # the events left over go too
    assert crm_domain.upload_outbox(world.integration.pk).uploaded == 3
    assert sorted(world.crm.calls()) == sorted(f"ctihub-{c.pk}" for c in calls)
    assert sorted(e["type"] for e in world.crm.events()) == ["hangup"] * 3 + ["in"] * 3


def test_it_drains_calls_still_backing_off_as_soon_as_retailcrm_takes_a_batch_again(world):
    old = outbox_through_an_outage(world, 3)
    CrmCallSync.objects.filter(call__in=old).update(upload_next_at=timezone.now() + timedelta(minutes=10))
    world.crm.configure(down=False)
    for call in old:
        crm_domain.sync_call(call.pk)
    fresh = end(ringing(world, pbx_call_id="-9"))  # the first call to end once retailCRM is back
    crm_domain.sync_call(fresh.pk)
    assert crm_domain.upload_outbox(world.integration.pk).uploaded == 4  # not 1, the rest ten minutes later
    assert sorted(world.crm.calls()) == sorted(f"ctihub-{c.pk}" for c in [*old, fresh])


def test_it_sends_a_refused_batch_one_by_one_so_one_bad_call_holds_back_no_other(world, monkeypatch):
    good = end(ringing(world, pbx_call_id="-1"))
    bad = end(ringing(world, pbx_call_id="-2"))
    for call in (good, bad):
        crm_domain.sync_call(call.pk)
    real_record = payloads.upload_record

    def record_with_a_negative_duration_for_bad(call, **kwargs):
        # The database cannot hold a negative duration; the record retailCRM refuses is made here.
        record = real_record(call, **kwargs)
        return {**record, "duration": -5000} if call.pk == bad.pk else record

    monkeypatch.setattr(payloads, "upload_record", record_with_a_negative_duration_for_bad)
    report = crm_domain.upload_outbox(world.integration.pk)
    assert (report.uploaded, report.refused) == (1, 1)
    assert list(world.crm.calls()) == [f"ctihub-{good.pk}"]
    assert row_of(bad, world).upload_skipped.startswith("retailCRM refused it")
    assert crm_domain.upload_outbox(world.integration.pk).batches == 0  # not retried forever


# --- call_changed and the sweep -----------------------------------------------------------------------


def test_it_marks_calls_no_crm_listens_to_as_skipped(db, queued):
    call = make_call(make_account())
    crm_domain.call_changed(call.pk, 1)
    assert Call.objects.get(pk=call.pk).crm_sync_state == Call.CrmSync.SKIPPED
    assert queued == []


def test_it_queues_a_sync_when_a_call_starts_or_ends_but_not_for_every_hold(world, queued):
    call = ringing(world)
    crm_domain.call_changed(call.pk, 1)
    assert queued == [("sync_call_task", (call.pk,))]
    crm_domain.sync_call(call.pk)
    Call.objects.filter(pk=call.pk).update(state=Call.State.HELD)
    crm_domain.call_changed(call.pk, 2)
    assert len(queued) == 1  # the start event is out: a hold is nothing retailCRM hears about
    end(call)
    crm_domain.call_changed(call.pk, 3)
    assert queued[-1] == ("sync_call_task", (call.pk,))


def test_it_only_feeds_an_integration_the_accounts_it_serves(world, queued):
    other = make_account()
    world.integration.accounts.set([other])
    call = ringing(world)
    crm_domain.call_changed(call.pk, 1)
    assert Call.objects.get(pk=call.pk).crm_sync_state == Call.CrmSync.SKIPPED


def test_the_sweep_takes_up_a_lost_start_event_while_it_is_still_worth_sending(world):
    # A Redis restart loses the queued tasks: the start event must go out within its minute, not after it.
    a_while_ago = timezone.now() - timedelta(seconds=20)
    live = ringing(world, pbx_call_id="-1")
    ended = end(ringing(world, pbx_call_id="-2"), ended_at=a_while_ago)
    sent = ringing(world, pbx_call_id="-3")
    CrmCallSync.objects.create(integration=world.integration, call=sent, in_event_sent_at=a_while_ago)
    internal = ringing(world, pbx_call_id="-4", is_internal=True)
    retrying = ringing(world, pbx_call_id="-5")
    CrmCallSync.objects.create(integration=world.integration, call=retrying,
                               events_next_at=timezone.now() + timedelta(seconds=5))
    # Uploaded while its start event waited on a retry whose task died with the broker: still due.
    uploaded = end(ringing(world, pbx_call_id="-7"), ended_at=a_while_ago, crm_sync_state=Call.CrmSync.SYNCED)
    CrmCallSync.objects.create(integration=world.integration, call=uploaded, events_attempts=1,
                               events_next_at=a_while_ago, outbox_at=a_while_ago, uploaded_at=a_while_ago)
    no_crm = ringing(world, pbx_call_id="-8", crm_sync_state=Call.CrmSync.SKIPPED)
    Call.objects.update(updated_at=a_while_ago)
    just_changed = ringing(world, pbx_call_id="-6")  # its own task is on the way
    report = crm_domain.sweep()
    assert report.calls == sorted([live.pk, ended.pk, uploaded.pk])
    assert {sent.pk, internal.pk, retrying.pk, just_changed.pk, no_crm.pk}.isdisjoint(report.calls)
    crm_domain.sync_call(uploaded.pk)
    assert row_of(uploaded, world).in_event_sent_at and row_of(uploaded, world).hangup_event_sent_at
    crm_domain.sync_call(live.pk)
    assert row_of(live, world).in_event_sent_at is not None


def test_the_sweep_finds_lost_syncs_due_hangups_and_due_outboxes(world):
    old = timezone.now() - timedelta(minutes=10)
    lost = end(ringing(world, pbx_call_id="-1"), ended_at=old)  # its task never ran
    hangup_due = end(ringing(world, pbx_call_id="-2"), ended_at=old)
    CrmCallSync.objects.create(integration=world.integration, call=hangup_due, in_event_sent_at=old, outbox_at=old,
                               uploaded_at=old)
    waiting = end(ringing(world, pbx_call_id="-3"), ended_at=old)
    CrmCallSync.objects.create(integration=world.integration, call=waiting, outbox_at=old, events_skipped="x",
                               upload_next_at=old)
    fresh = end(ringing(world, pbx_call_id="-4"))  # just ended: its own task is on the way
    report = crm_domain.sweep()
    assert report.calls == sorted([lost.pk, hangup_due.pk])
    assert report.integrations == [world.integration.pk]
    assert fresh.pk not in report.calls


# --- a call the stale-call sweep ended (telephony/sweep.py) --------------------------------------

def test_a_swept_call_gets_its_hangup_event_and_one_upload_with_what_is_known(world, queued, settings):
    settings.TIME_ZONE = "UTC"
    settings.CALL_STALE_RINGING_SECONDS = 60  # its call had its last news 61 s before the sweep
    call = live_call(world.account, u.RINGING, 61, terminal_pbx_id=world.terminal.pbx_id,
                     remote_number="0412345670", external_phone="+74999999999")
    crm_domain.sync_call(call.pk)  # the pop-up went out while it rang
    assert [e["type"] for e in world.crm.events()] == ["in"]

    sweep_stale_calls(now=NOW)
    crm_domain.sync_call(call.pk)
    crm_domain.sync_call(call.pk)
    crm_domain.upload_outbox(world.integration.pk)
    crm_domain.upload_outbox(world.integration.pk)

    events = world.crm.events()
    assert [(e["type"], e.get("hangupStatus")) for e in events] == [("in", None), ("hangup", "failed")]
    uploaded = [record for upload in world.crm.uploads() for record in upload["calls"]]
    assert len(uploaded) == 1
    assert (uploaded[0]["externalId"], uploaded[0]["result"], uploaded[0]["duration"]) == (
        f"ctihub-{call.pk}", "unknown", 0)
    assert Call.objects.get(pk=call.pk).crm_sync_state == Call.CrmSync.SYNCED
