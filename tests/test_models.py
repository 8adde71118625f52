import pytest
from django.db import IntegrityError, transaction

from telephony.models import Call, CallEvent, Terminal
from tests.factories import make_account, make_call, make_terminal

pytestmark = pytest.mark.django_db


def test_it_rejects_the_same_pbx_frame_stored_twice():
    call = make_call(make_account())
    CallEvent.objects.create(call=call, kind="callRinging", payload={"callId": "-428"}, dedupe_key="1:-428:ringing")
    with pytest.raises(IntegrityError), transaction.atomic():
        CallEvent.objects.create(call=call, kind="callRinging", payload={"callId": "-428"}, dedupe_key="1:-428:ringing")
    assert CallEvent.objects.count() == 1


def test_it_keeps_64_bit_terminal_ids_exactly_as_strings():
    # 5985841581756135023 is not representable as a float: float() would end in ...5024.
    terminal = make_terminal(make_account(), pbx_id="5985841581756135023")
    assert float(terminal.pbx_id) != 5985841581756135023
    assert Terminal.objects.get(pk=terminal.pk).pbx_id == "5985841581756135023"


def test_it_keeps_negative_call_ids_as_strings():
    call = make_call(make_account(), pbx_call_id="-428")
    assert Call.objects.get(pk=call.pk).pbx_call_id == "-428"


def test_it_allows_one_call_per_pbx_call_id_and_account():
    account = make_account()
    make_call(account, pbx_call_id="-5499")
    make_call(make_account(), pbx_call_id="-5499")  # another account may reuse the id
    with pytest.raises(IntegrityError), transaction.atomic():
        make_call(account, pbx_call_id="-5499")


def test_it_allows_one_terminal_per_pbx_id_and_account():
    account = make_account()
    make_terminal(account, pbx_id="42")
    with pytest.raises(IntegrityError), transaction.atomic():
        make_terminal(account, pbx_id="42")


def test_it_runs_persistence_tests_on_postgresql():
    from django.db import connection

    assert connection.vendor == "postgresql", "scripts/test sets DATABASE_URL to PostgreSQL"
