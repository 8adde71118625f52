"""apply_call_update: one path for every call event, idempotent and order-safe."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from telephony import domain, status
from telephony import updates as u
from telephony.domain import apply_call_update, apply_call_updates
from telephony.models import Call, CallEvent
from tests.factories import make_account, make_agent, make_terminal

T0 = timezone.now().replace(microsecond=0)


def update(account, state, kind, at=0, **fields):
    fields.setdefault("pbx_call_id", "-428")
    return u.CallUpdate(
        account_id=account.pk, state=state, kind=kind, payload={"event": kind},
        occurred_at=T0 + timedelta(seconds=at), **fields,
    )


@pytest.fixture
def account(db):
    return make_account(default_region="FR")



@pytest.mark.django_db
def test_it_records_a_whole_incoming_call_with_times_and_durations(account, published, django_capture_on_commit_callbacks):
    agent = make_agent()
    make_terminal(account, pbx_id="5985841581756135023", agent=agent)
    with django_capture_on_commit_callbacks(execute=True):
        apply_call_update(update(account, u.RINGING, "callAlerting", 0, terminal_pbx_id="5985841581756135023",
                                 direction=u.INBOUND, remote_number="0412345670", remote_label="Alice"))
        apply_call_update(update(account, u.TALKING, "callTalking", 5))
        apply_call_update(update(account, u.HELD, "callHeld", 20))
        apply_call_update(update(account, u.TALKING, "callTalking", 30))
        apply_call_update(update(account, u.ENDED, "callDropped", 65, end_cause=u.END_HANGUP))
    call = Call.objects.get()
    assert call.agent == agent
    assert call.remote_number_e164 == "+33412345670"
    assert call.remote_number_raw == "0412345670"
    assert (call.state, call.end_cause) == (Call.State.ENDED, u.END_HANGUP)
    assert call.answered_at == T0 + timedelta(seconds=5)
    assert call.ended_at == T0 + timedelta(seconds=65)
    assert (call.ringing_ms, call.talking_ms) == (5000, 60000)
    assert call.version == 5
    assert list(call.events.values_list("kind", flat=True)) == [
        "callAlerting", "callTalking", "callHeld", "callTalking", "callDropped"]
    assert published == [call.pk] * 5


@pytest.mark.django_db
def test_it_treats_a_replayed_frame_as_a_no_op(account, published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = apply_call_update(update(account, u.RINGING, "callRinging"))
        again = apply_call_update(update(account, u.RINGING, "callRinging"))
    assert first.changed and not again.changed
    assert CallEvent.objects.count() == 1
    assert Call.objects.get().version == 1
    assert len(published) == 1


@pytest.mark.django_db
def test_it_treats_a_frame_with_a_known_frame_id_as_a_duplicate(account):
    apply_call_update(update(account, u.TALKING, "snapshot", frame_id="1420707629443:talking", allowed_actions=("hold",)))
    apply_call_update(update(account, u.HELD, "snapshot", frame_id="1420707783052:held", allowed_actions=("resume",)))
    replay = apply_call_update(update(account, u.TALKING, "snapshot", frame_id="1420707629443:talking",
                                      allowed_actions=("hold",)))
    assert not replay.changed
    assert Call.objects.get().state == Call.State.HELD


@pytest.mark.django_db
def test_it_never_revives_an_ended_call_with_a_late_frame(account):
    apply_call_update(update(account, u.RINGING, "EARLY", 0, seq=1))
    apply_call_update(update(account, u.ENDED, "TERMINATED", 3, seq=4, end_cause=u.END_REJECTED))
    late = apply_call_update(update(account, u.RINGING, "EARLY", 1, seq=2))
    assert not late.changed
    call = Call.objects.get()
    assert (call.state, call.end_cause, call.last_seq) == (Call.State.ENDED, u.END_REJECTED, 4)


@pytest.mark.django_db
def test_it_ignores_an_older_sequence_number(account):
    apply_call_update(update(account, u.TALKING, "CONFIRMED", 2, seq=3))
    stale = apply_call_update(update(account, u.RINGING, "EARLY", 1, seq=2))
    assert not stale.changed
    assert Call.objects.get().state == Call.State.TALKING


@pytest.mark.django_db
def test_it_marks_an_unanswered_call_as_no_answer(account):
    apply_call_update(update(account, u.RINGING, "callAlerting", 0))
    apply_call_update(update(account, u.ENDED, "callDropped", 12))
    call = Call.objects.get()
    assert (call.end_cause, call.answered_at, call.ringing_ms, call.talking_ms) == (u.END_NO_ANSWER, None, 12000, 0)


@pytest.mark.django_db
def test_it_counts_a_call_as_answered_when_the_pbx_says_so_though_no_talking_frame_came(account):
    # myRCC sends at most one snapshot per 100 ms: ringing -> talking -> dropped may arrive as ringing -> dropped.
    apply_call_update(update(account, u.RINGING, "snapshot", 0))
    apply_call_update(update(account, u.ENDED, "snapshot", 30, answered_at=T0 + timedelta(seconds=5)))
    call = Call.objects.get()
    assert (call.end_cause, call.answered_at, call.ringing_ms, call.talking_ms) == (
        u.END_HANGUP, T0 + timedelta(seconds=5), 5000, 25000)


@pytest.mark.django_db
def test_it_turns_a_call_ended_as_missed_into_an_answered_one_when_its_answer_comes_after_the_end(account):
    # The end came first with nothing saying it was answered (a snapshot no longer listing the call);
    # the PBX's answer, late, must not leave it missed, nor its durations those of a missed call.
    apply_call_update(update(account, u.RINGING, "callAlerting", 0))
    apply_call_update(update(account, u.ENDED, "snapshot", 30, frame_id="absent"))
    assert Call.objects.get().end_cause == u.END_NO_ANSWER
    apply_call_update(update(account, u.ENDED, "webhook", 5, frame_id="late", answered_at=T0 + timedelta(seconds=5)))
    call = Call.objects.get()
    assert (call.state, call.end_cause, call.answered_at, call.ended_at, call.ringing_ms, call.talking_ms) == (
        "ended", u.END_HANGUP, T0 + timedelta(seconds=5), T0 + timedelta(seconds=30), 5000, 25000)


@pytest.mark.django_db
def test_it_keeps_a_cause_the_pbx_gave_when_an_answer_comes_after_the_end(account):
    apply_call_update(update(account, u.RINGING, "callAlerting", 0))
    apply_call_update(update(account, u.ENDED, "callDropped", 30, frame_id="end", end_cause=u.END_TRANSFERRED))
    apply_call_update(update(account, u.ENDED, "webhook", 5, frame_id="late", answered_at=T0 + timedelta(seconds=5)))
    call = Call.objects.get()
    assert (call.end_cause, call.answered_at) == (u.END_TRANSFERRED, T0 + timedelta(seconds=5))


@pytest.mark.django_db
def test_it_takes_durations_from_the_pbx_when_it_gives_them(account):
    apply_call_update(update(account, u.RINGING, "callAlerting", 0))
    apply_call_update(update(account, u.ENDED, "callDropped", 1, ringing_ms=262, talking_ms=81))
    call = Call.objects.get()
    assert (call.ringing_ms, call.talking_ms) == (262, 81)


@pytest.mark.django_db
def test_it_starts_a_new_call_when_the_pbx_recycles_an_old_call_id(account):
    apply_call_update(update(account, u.RINGING, "callAlerting", 0))
    apply_call_update(update(account, u.ENDED, "callDropped", 10))
    apply_call_update(update(account, u.RINGING, "callAlerting", 3600))
    assert Call.objects.count() == 2
    old, new = Call.objects.order_by("created_at")
    assert old.pbx_call_id == f"-428#{old.pk}" and old.state == Call.State.ENDED
    assert new.pbx_call_id == "-428" and new.state == Call.State.RINGING


def test_it_takes_a_frame_telling_a_live_call_as_it_is_for_news_of_its_life_only(account):
    # The stale-call sweep reads a call's last news from updated_at. A frame that changes nothing (a Telepo snapshot
    # listing the call, a repeated state) writes nothing, but says the call lives: a call talking for hours that
    # every snapshot still listed was swept. Only updated_at moves, at most every STILL_LIVE_EVERY, never back.
    from dataclasses import replace

    from django.utils import timezone

    from telephony.domain import STILL_LIVE_EVERY

    def frame(state, when):
        return replace(update(account, state, "snapshot", remote_number="0612345678"), occurred_at=when)

    now = timezone.now()
    call = apply_call_update(frame(u.TALKING, now - timedelta(hours=2))).call
    Call.objects.filter(pk=call.pk).update(updated_at=now - timedelta(hours=2))
    version, events = call.version, CallEvent.objects.count()

    noted_at = now - timedelta(hours=1)
    assert not apply_call_update(frame(u.TALKING, noted_at)).changed
    assert Call.objects.get(pk=call.pk).updated_at == noted_at
    apply_call_update(frame(u.TALKING, noted_at + STILL_LIVE_EVERY - timedelta(seconds=1)))
    assert Call.objects.get(pk=call.pk).updated_at == noted_at  # within STILL_LIVE_EVERY: nothing written
    apply_call_update(frame(u.TALKING, now + timedelta(hours=1)))  # a PBX clock an hour ahead: as of now
    assert noted_at < Call.objects.get(pk=call.pk).updated_at <= timezone.now()
    stored = Call.objects.get(pk=call.pk)
    assert (stored.version, CallEvent.objects.count()) == (version, events)  # no change, no event, no card

    apply_call_update(frame(u.ENDED, timezone.now()))
    ended = Call.objects.get(pk=call.pk).updated_at
    apply_call_update(frame(u.ENDED, timezone.now() + 2 * STILL_LIVE_EVERY))
    assert Call.objects.get(pk=call.pk).updated_at == ended  # an ended call is not "alive"


def test_it_starts_a_call_of_its_own_for_another_terminals_leg_under_an_ended_calls_id(account):
    # A call forked to two phones of the user: the first drops (answered elsewhere) before the second's frames
    # come, under the same id. Merged into the ended call, the second phone's answer was dropped and the call
    # recorded as missed. A repeated frame of the first phone changes nothing.
    from tests.factories import make_terminal

    desk, mobile = make_terminal(account, pbx_id="desk"), make_terminal(account, pbx_id="mobile")
    apply_call_update(update(account, u.RINGING, "callRinging", 0, terminal_pbx_id="desk"))
    apply_call_update(update(account, u.ENDED, "callDropped", 5, terminal_pbx_id="desk"))
    apply_call_update(update(account, u.RINGING, "callRinging", 1, terminal_pbx_id="desk", frame_id="again"))
    assert Call.objects.count() == 1
    apply_call_update(update(account, u.RINGING, "callRinging", 6, terminal_pbx_id="mobile"))
    apply_call_update(update(account, u.TALKING, "callTalking", 8, terminal_pbx_id="mobile"))
    old, new = Call.objects.order_by("created_at")
    assert (old.pbx_call_id, old.terminal, old.state) == (f"-428#{old.pk}", desk, Call.State.ENDED)
    assert (new.pbx_call_id, new.terminal, new.state, new.answered_at is not None) == (
        "-428", mobile, Call.State.TALKING, True)


@pytest.mark.django_db
def test_it_does_not_take_a_stored_frame_sent_again_a_day_later_for_a_recycled_call_id(account):
    apply_call_update(update(account, u.RINGING, "webhook", 0, frame_id="seq1", seq=1))
    apply_call_update(update(account, u.ENDED, "webhook", 10, frame_id="seq2", seq=2))
    replay = apply_call_update(update(account, u.RINGING, "webhook", 86400, frame_id="seq1", seq=1))
    assert not replay.changed
    assert list(Call.objects.values_list("pbx_call_id", flat=True)) == ["-428"]
    assert CallEvent.objects.count() == 2


@pytest.mark.django_db
def test_it_publishes_only_after_the_transaction_commits(account, published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        apply_call_update(update(account, u.RINGING, "callRinging"))
        assert published == []
    assert len(callbacks) == 1


@pytest.mark.django_db
def test_it_keeps_an_e164_number_the_pbx_gives_and_leaves_extensions_unconverted(account):
    apply_call_update(update(account, u.RINGING, "callRinging", remote_number="104", pbx_call_id="a"))
    apply_call_update(update(account, u.RINGING, "callRinging", remote_number="0033412345670",
                             remote_number_e164="+33412345670", pbx_call_id="b"))
    assert Call.objects.get(pbx_call_id="a").remote_number_e164 == ""
    assert Call.objects.get(pbx_call_id="b").remote_number_e164 == "+33412345670"


@pytest.mark.parametrize("frame_id", [None, "f1"])
@pytest.mark.django_db(transaction=True)
def test_it_stores_one_call_and_one_event_when_workers_apply_the_same_frame_at_once(published, frame_id):
    account = make_account()
    barrier = threading.Barrier(4)
    results, errors = [], []

    def worker():
        try:
            barrier.wait()
            results.append(apply_call_update(update(account, u.RINGING, "callRinging", frame_id=frame_id)).changed)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == [False, False, False, True]
    assert Call.objects.count() == 1
    assert CallEvent.objects.count() == 1


# --- bursts: what one socket read together, applied in one transaction ----------------------------


def whole_call(account, pbx_call_id, terminal=None, at=0):
    return [
        update(account, u.RINGING, "callAlerting", at, pbx_call_id=pbx_call_id, terminal_pbx_id=terminal,
               direction=u.INBOUND, remote_number=f"06{pbx_call_id[-8:]:0>8}"),
        update(account, u.TALKING, "callTalking", at + 5, pbx_call_id=pbx_call_id),
        update(account, u.ENDED, "callDropped", at + 9, pbx_call_id=pbx_call_id, end_cause=u.END_HANGUP),
    ]


def burst_of(account, calls, terminal=None):
    return [frame for n in range(calls) for frame in whole_call(account, f"-{n + 1}", terminal, at=n)]


@pytest.mark.django_db
def test_it_applies_a_burst_with_as_many_statements_whatever_its_size(account, published, django_assert_max_num_queries,
                                                                      django_capture_on_commit_callbacks):
    make_terminal(account, pbx_id="t1", agent=make_agent())
    with django_capture_on_commit_callbacks(execute=True):
        apply_call_updates(burst_of(account, 1, "t1"))  # warms the per-process account and CRM caches
    with django_assert_max_num_queries(12) as small, django_capture_on_commit_callbacks(execute=True):
        apply_call_updates(burst_of(account, 2, "t1")[3:])  # one whole call, 3 frames
    with django_assert_max_num_queries(12) as large, django_capture_on_commit_callbacks(execute=True):
        apply_call_updates(burst_of(account, 60, "t1")[6:])  # 58 whole calls, 174 frames
    assert len(large.captured_queries) == len(small.captured_queries)
    assert Call.objects.filter(state=Call.State.ENDED).count() == 60
    assert CallEvent.objects.count() == 180


@pytest.mark.django_db
def test_it_applies_a_frame_to_its_call_in_two_statements(account, published):
    # One reads: it locks the call and reads the terminal. One writes: it updates the call and stores the event.
    from django.test.utils import CaptureQueriesContext

    agent = make_agent()
    make_terminal(account, pbx_id="t1", agent=agent)
    apply_call_update(update(account, u.RINGING, "callRinging", 0, terminal_pbx_id="t1", direction=u.INBOUND))
    with CaptureQueriesContext(connection) as talking:
        apply_call_update(update(account, u.TALKING, "callTalking", 5, terminal_pbx_id="t1"))
    statements = [q["sql"] for q in talking.captured_queries if "SAVEPOINT" not in q["sql"]]  # the test's transaction
    assert len(statements) == 2, statements
    assert "FOR UPDATE" in statements[0] and '"telephony_terminal"' in statements[0]
    assert " SET " in statements[1] and '"telephony_callevent"' in statements[1]
    call = Call.objects.get()
    assert (call.state, call.agent_id, call.terminal.pbx_id) == (Call.State.TALKING, agent.pk, "t1")
    # A frame whose terminal is unknown still finds (and locks) its call.
    apply_call_update(update(account, u.ENDED, "callDropped", 9, terminal_pbx_id="unknown"))
    assert Call.objects.get().state == Call.State.ENDED


@pytest.mark.django_db
def test_it_stores_a_ringing_frames_new_call_and_its_event_in_one_statement(account, published,
                                                                            django_capture_on_commit_callbacks):
    # The call's INSERT was a round trip of its own, before the event's: a third of the frames are ringing ones.
    from django.test.utils import CaptureQueriesContext

    make_terminal(account, pbx_id="t1", agent=make_agent())
    with django_capture_on_commit_callbacks(execute=True):  # warms the per-process account and CRM caches
        apply_call_updates([update(account, u.RINGING, "callRinging", 0, pbx_call_id="-9")])
    published.clear()
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as ringing:
        [applied] = apply_call_updates([update(account, u.RINGING, "callRinging", 0, terminal_pbx_id="t1",
                                               direction=u.INBOUND)])
    # The test's transaction makes the SAVEPOINTs; the CRM hand-off's own statements run after commit.
    statements = [q["sql"] for q in ringing.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 2, statements
    assert 'INSERT INTO "telephony_call"' in statements[1] and 'INSERT INTO "telephony_callevent"' in statements[1]
    call = Call.objects.get(pbx_call_id="-428")
    assert applied.call.pk == call.pk and published == [call.pk], "the card went out without the call's id"
    assert list(CallEvent.objects.filter(call=call).values_list("call_id", "kind")) == [(call.pk, "callRinging")]
    # A burst with a new call (two frames of it) and a change of a call already stored: still one write.
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as burst:
        apply_call_updates([update(account, u.RINGING, "callRinging", 1, pbx_call_id="-2"),
                            update(account, u.TALKING, "callTalking", 2),
                            update(account, u.TALKING, "callTalking", 3, pbx_call_id="-2")])
    statements = [q["sql"] for q in burst.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 2, statements
    second = Call.objects.get(pbx_call_id="-2")
    assert (second.state, second.version, Call.objects.get(pk=call.pk).state) == (Call.State.TALKING, 2,
                                                                                   Call.State.TALKING)
    assert sorted(CallEvent.objects.filter(call=second).values_list("kind", flat=True)) == ["callRinging",
                                                                                            "callTalking"]
    assert published[1:] == [second.pk, call.pk, second.pk]


@pytest.mark.django_db
def test_it_runs_a_bursts_statements_on_one_cursor_that_binds_values_on_the_server(account, published, monkeypatch):
    # A new cursor a statement, and every value quoted into the SQL in Python, cost more than the statements.
    from django.db.backends.postgresql.base import ServerBindingCursor

    cursors = []

    class Counted(ServerBindingCursor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.statements = []
            cursors.append(self)

        def execute(self, query, params=None, **kwargs):
            self.statements.append(query)
            return super().execute(query, params, **kwargs)

    monkeypatch.setattr(domain, "_ServerBindingCursor", Counted)
    make_terminal(account, pbx_id="t1", agent=make_agent())
    apply_call_updates([update(account, u.RINGING, "callRinging", 0, terminal_pbx_id="t1", direction=u.INBOUND,
                               remote_label="O'Brien"),
                        update(account, u.TALKING, "callTalking", 5, terminal_pbx_id="t1", frame_id="f2")])
    assert len(cursors) == 1
    # The lock and the terminals, the stored frames, the new call with its events: values as parameters, not text.
    assert len(cursors[0].statements) == 3 and all("O'Brien" not in sql for sql in cursors[0].statements)
    call = Call.objects.get()
    assert (call.state, call.remote_label, call.terminal.pbx_id) == (Call.State.TALKING, "O'Brien", "t1")
    assert CallEvent.objects.filter(call=call).count() == 2


def _prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE from_sql = false")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db
def test_it_keeps_the_frame_paths_statements_prepared_and_the_orms_as_django_has_them(account, published):
    # PostgreSQL planned the lock and the write again at every frame: half its CPU a frame (issue 16).
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    make_terminal(account, pbx_id="t1", agent=make_agent())
    apply_call_update(update(account, u.RINGING, "callRinging", 0, terminal_pbx_id="t1", direction=u.INBOUND))
    apply_call_update(update(account, u.TALKING, "callTalking", 5, terminal_pbx_id="t1"))
    prepared = _prepared_statements()
    assert any(sql.startswith("WITH locked AS (SELECT") for sql in prepared), prepared
    assert any('INSERT INTO "telephony_callevent"' in sql for sql in prepared), prepared
    Call.objects.filter(state=Call.State.TALKING).count()
    Call.objects.filter(state=Call.State.TALKING).count()
    assert not [sql for sql in _prepared_statements() if "COUNT(*)" in sql]  # the ORM's: not prepared, as Django has it
    # A frame of a shape seen before runs the statements kept, and still finds and changes its own call.
    apply_call_update(update(account, u.RINGING, "callRinging", 10, terminal_pbx_id="t1", direction=u.INBOUND,
                             pbx_call_id="-2"))
    apply_call_update(update(account, u.TALKING, "callTalking", 15, terminal_pbx_id="t1", pbx_call_id="-2"))
    assert sorted(_prepared_statements()) == sorted(prepared)
    assert sorted(Call.objects.values_list("pbx_call_id", "state")) == [("-2", "talking"), ("-428", "talking")]


@pytest.mark.django_db
def test_it_prepares_nothing_when_the_setting_is_off(account, published, settings):
    # Behind a transaction-pooling PgBouncer older than 1.21 a statement prepared on one server connection is
    # unknown on the next: DATABASE_PREPARED_STATEMENTS=false.
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    settings.DATABASE_PREPARED_STATEMENTS = False
    make_terminal(account, pbx_id="t1", agent=make_agent())
    apply_call_update(update(account, u.RINGING, "callRinging", 0, terminal_pbx_id="t1", direction=u.INBOUND))
    apply_call_update(update(account, u.TALKING, "callTalking", 5, terminal_pbx_id="t1"))
    assert _prepared_statements() == []
    assert Call.objects.get().state == Call.State.TALKING


@pytest.mark.django_db(transaction=True)
def test_it_goes_on_after_a_rollback_and_a_new_connection_with_statements_prepared(account, published):
    # psycopg forgets (and deallocates) its prepared statements after a rollback; a new connection has none.
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    from django.db import transaction

    make_terminal(account, pbx_id="t1", agent=make_agent())
    apply_call_update(update(account, u.RINGING, "callRinging", 0, terminal_pbx_id="t1", direction=u.INBOUND))
    with pytest.raises(RuntimeError), transaction.atomic():
        apply_call_update(update(account, u.TALKING, "callTalking", 5, terminal_pbx_id="t1"))
        raise RuntimeError("the transaction rolls back")
    assert Call.objects.get().state == Call.State.RINGING
    apply_call_update(update(account, u.TALKING, "callTalking", 5, terminal_pbx_id="t1"))
    connection.close()
    apply_call_update(update(account, u.ENDED, "callDropped", 9, terminal_pbx_id="t1"))
    call = Call.objects.get()
    assert (call.state, call.events.count()) == (Call.State.ENDED, 3)


@pytest.mark.django_db
def test_it_writes_only_the_columns_a_frame_changed(account, published):
    from django.test.utils import CaptureQueriesContext

    apply_call_update(update(account, u.RINGING, "callRinging", 0, direction=u.INBOUND, remote_number="0412345670",
                             remote_label="Alice", allowed_actions=("answer",)))
    with CaptureQueriesContext(connection) as talking:
        apply_call_update(update(account, u.TALKING, "callTalking", 5, allowed_actions=("answer",)))
    [statement] = [q["sql"] for q in talking.captured_queries if " SET " in q["sql"]]
    set_columns = statement.split(" SET ", 1)[1].split(" WHERE ", 1)[0]
    for unchanged in ("remote_number_raw", "remote_label", "allowed_actions", "direction", "ended_at"):
        assert f'"{unchanged}"' not in set_columns, statement
    for changed in ("state", "answered_at", "version", "updated_at"):
        assert f'"{changed}"' in set_columns, statement
    call = Call.objects.get()
    assert (call.state, call.remote_label, call.allowed_actions, call.version) == ("talking", "Alice", ["answer"], 2)
    apply_call_update(update(account, u.ENDED, "callDropped", 9))
    call = Call.objects.get()
    assert (call.state, call.allowed_actions, call.talking_ms, call.version) == ("ended", [], 4000, 3)


@pytest.mark.django_db
def test_it_applies_a_burst_in_order_and_publishes_every_change_in_order(account, published,
                                                                         django_capture_on_commit_callbacks):
    agent = make_agent()
    make_terminal(account, pbx_id="t1", agent=agent)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        applied = apply_call_updates(burst_of(account, 2, "t1"))
    assert [a.changed for a in applied] == [True] * 6
    assert len(callbacks) == 1  # one hand-off for the whole burst
    first, second = Call.objects.get(pbx_call_id="-1"), Call.objects.get(pbx_call_id="-2")
    assert published == [first.pk] * 3 + [second.pk] * 3
    for call in (first, second):
        assert (call.state, call.version, call.agent_id) == (Call.State.ENDED, 3, agent.pk)
        assert list(call.events.values_list("kind", flat=True)) == ["callAlerting", "callTalking", "callDropped"]
        assert call.answered_at is not None and call.talking_ms == 4000


@pytest.mark.django_db
def test_it_publishes_each_card_as_the_call_was_at_that_change(account, monkeypatch, django_capture_on_commit_callbacks):
    from concurrent.futures import Future

    cards = []

    def publish_cards(calls):
        cards.extend((c.state, c.version) for c in calls)
        done = Future()
        done.set_result(None)
        return done

    monkeypatch.setattr("telephony.publish.publish_cards", publish_cards)
    with django_capture_on_commit_callbacks(execute=True):
        apply_call_updates(whole_call(account, "-7"))
    assert cards == [("ringing", 1), ("talking", 2), ("ended", 3)]


@pytest.mark.django_db
def test_it_hands_each_call_of_a_burst_to_the_crm_once_as_it_ended_up(account, published, committed,
                                                                      django_capture_on_commit_callbacks):
    # Through the core's own hook (telephony.plugins.calls_committed), which the CRM side listens to.
    with django_capture_on_commit_callbacks(execute=True):
        apply_call_updates(burst_of(account, 2))
    handed = [handed for send in committed for handed in send]
    assert sorted(state for _pk, state in handed) == ["ended", "ended"]
    assert len({pk for pk, _state in handed}) == 2


@pytest.mark.django_db
def test_it_stores_a_frame_repeated_within_a_burst_once(account, published):
    frame = update(account, u.RINGING, "callRinging", frame_id="m1")
    applied = apply_call_updates([frame, frame, update(account, u.TALKING, "callTalking", 3, frame_id="m2"), frame])
    assert [a.changed for a in applied] == [True, False, True, False]
    assert CallEvent.objects.count() == 2
    assert Call.objects.get().version == 2


def lock_missing_the_other_workers_call_once(monkeypatch) -> dict:
    """The next lock reads no call, as if it came before another worker's INSERT committed; the returned
    dict's ``left`` says whether that read is still to come."""
    real_lock = domain._lock_calls
    blind = {"left": 1}

    def lock(cursor, updates):
        if blind["left"]:
            blind["left"] -= 1
            return {}, real_lock(cursor, updates)[1]
        return real_lock(cursor, updates)

    monkeypatch.setattr(domain, "_lock_calls", lock)
    return blind


@pytest.mark.django_db
def test_it_applies_a_burst_one_by_one_when_another_worker_created_a_call_first(account, published, monkeypatch):
    apply_call_update(update(account, u.RINGING, "callRinging", pbx_call_id="-1"))
    blind = lock_missing_the_other_workers_call_once(monkeypatch)
    applied = apply_call_updates([update(account, u.TALKING, "callTalking", 2, pbx_call_id="-1"),
                                  update(account, u.RINGING, "callRinging", 3, pbx_call_id="-2")])
    assert [a.changed for a in applied] == [True, True] and blind["left"] == 0  # the blind read did happen
    assert Call.objects.get(pbx_call_id="-1").state == Call.State.TALKING
    assert Call.objects.count() == 2 and CallEvent.objects.count() == 3


@pytest.mark.django_db
def test_it_applies_a_ringing_frame_again_when_another_worker_stored_its_call_first(account, published, monkeypatch):
    # The new call's INSERT rides in the event's statement: its IntegrityError must still lead to the retry.
    apply_call_update(update(account, u.RINGING, "callRinging", pbx_call_id="-1"))
    blind = lock_missing_the_other_workers_call_once(monkeypatch)
    [applied] = apply_call_updates([update(account, u.TALKING, "callTalking", 2, pbx_call_id="-1")])
    assert applied.changed and blind["left"] == 0
    assert Call.objects.get().state == Call.State.TALKING and CallEvent.objects.count() == 2


def test_it_rejects_an_update_without_a_string_call_id():
    with pytest.raises(u.FrameRejected):
        u.CallUpdate(account_id=1, pbx_call_id=428, state=u.RINGING, kind="x", payload={}, occurred_at=T0)
    with pytest.raises(u.FrameRejected):
        u.CallUpdate(account_id=1, pbx_call_id="1", state="exploded", kind="x", payload={}, occurred_at=T0)


@pytest.mark.django_db
def test_it_notes_a_listeners_last_event_at_most_once_a_second(account, monkeypatch, django_assert_num_queries):
    from telephony.models import Listener

    listener = Listener.objects.create(account=account, name="l1")
    clock = [1000.0]
    monkeypatch.setattr(status.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(status, "_touched", {})
    monkeypatch.setattr(status, "_touch_pending", set())
    with django_assert_num_queries(1):  # the listener's row and its account's, in one statement
        status.touch_listener(listener.pk, account.pk)
    with django_assert_num_queries(0):
        status.touch_listener(listener.pk, account.pk)  # the same second: the admin shows no difference
    clock[0] += 1.5
    with django_assert_num_queries(1):
        status.touch_listener(listener.pk, account.pk)
    assert Listener.objects.get(pk=listener.pk).last_event_at is not None
    account.refresh_from_db()
    assert account.last_event_at is not None


@pytest.mark.django_db
def test_it_notes_the_last_event_of_all_the_listeners_of_a_process_in_one_statement(
        account, monkeypatch, django_assert_num_queries):
    # Written one by one, each listener's "last event" was an autocommit a second: a worker holding hundreds of
    # sockets made hundreds a second.
    from telephony.models import Listener

    first, second = (Listener.objects.create(account=account, name=f"l{n}") for n in range(2))
    clock = [1000.0]
    monkeypatch.setattr(status.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(status, "_touched", {})
    monkeypatch.setattr(status, "_touch_pending", set())
    with django_assert_num_queries(1):
        status.touch_listener(first.pk, account.pk)
    clock[0] += 0.5
    with django_assert_num_queries(1):
        status.touch_listener(second.pk, account.pk)  # never written: at once, and the account with it
    clock[0] += 0.2
    with django_assert_num_queries(0):  # both written within the second: they wait
        status.touch_listener(first.pk, account.pk)
        status.touch_listener(second.pk, account.pk)
    clock[0] += 0.4
    with django_assert_num_queries(1):  # the first is due: the second and the account go with it
        status.touch_listener(first.pk, account.pk)
    written = Listener.objects.filter(pk__in=[first.pk, second.pk]).values_list("last_event_at", flat=True)
    assert len(set(written)) == 1
    clock[0] += 0.5
    with django_assert_num_queries(0):
        status.touch_listener(second.pk, account.pk)  # written half a second ago, with the first


@pytest.mark.django_db
def test_it_notes_a_last_event_again_when_its_write_failed(account, monkeypatch):
    from django.db import OperationalError

    from telephony.models import Listener

    listener = Listener.objects.create(account=account, name="l1")
    monkeypatch.setattr(status, "_touched", {})
    monkeypatch.setattr(status, "_touch_pending", set())
    real_write = status._write_last_event

    def dropped(rows):
        raise OperationalError("the connection was dropped")

    monkeypatch.setattr(status, "_write_last_event", dropped)
    with pytest.raises(OperationalError):
        status.touch_listener(listener.pk, account.pk)
    monkeypatch.setattr(status, "_write_last_event", real_write)
    status.touch_listener(listener.pk, account.pk)  # at once, not a second later
    assert Listener.objects.get(pk=listener.pk).last_event_at is not None


@pytest.mark.django_db
def test_it_stores_and_publishes_a_state_the_pbx_named_that_changes_nothing_else(account, monkeypatch,
                                                                               django_capture_on_commit_callbacks):
    from concurrent.futures import Future

    cards = []

    def publish_cards(calls):
        cards.extend((c.state, c.pbx_state, c.version) for c in calls)
        done = Future()
        done.set_result(None)
        return done

    monkeypatch.setattr("telephony.publish.publish_cards", publish_cards)
    same = {"allowed_actions": ("hold",), "remote_number": "0412345670"}
    with django_capture_on_commit_callbacks(execute=True):
        apply_call_update(update(account, u.TALKING, "callLine.talking", 0, frame_id="1:talking", **same))
        # The parser kept the call talking: only the PBX's own word for the state is news.
        unknown = apply_call_update(update(account, u.TALKING, "callLine.conferenced", 1, frame_id="2:conferenced",
                                           pbx_state="conferenced", **same))
        known = apply_call_update(update(account, u.TALKING, "callLine.talking", 2, frame_id="3:talking", **same))
    assert unknown.changed and known.changed
    assert list(CallEvent.objects.order_by("id").values_list("kind", flat=True)) == [
        "callLine.talking", "callLine.conferenced", "callLine.talking"]
    assert cards == [("talking", "", 1), ("talking", "conferenced", 2), ("talking", "", 3)]
    assert Call.objects.get().pbx_state == ""


def test_it_cuts_a_long_pbx_state_to_its_column():
    update_ = u.CallUpdate(account_id=1, pbx_call_id="1", state=u.RINGING, kind="x", payload={}, occurred_at=T0,
                           pbx_state="x" * 500)
    assert update_.pbx_state == "x" * 40
