"""ensure_listeners: the Listener rows an account needs, kept in step with its terminals at every scan."""

import pytest

from telephony.control import ensure_listeners
from telephony.models import Listener
from telephony.providers import provider_for
from tests.factories import make_account, make_terminal

pytestmark = pytest.mark.django_db


def test_it_creates_a_listener_per_terminal_and_reads_them_back_as_they_are():
    account = make_account()
    terminals = [make_terminal(account) for _ in range(3)]
    wanted = ensure_listeners(account, provider_for(account))
    assert sorted(spec.terminal_pbx_id for _, spec in wanted) == sorted(t.pbx_id for t in terminals)
    assert {listener.terminal_id for listener, _ in wanted} == {t.pk for t in terminals}
    again = ensure_listeners(account, provider_for(account))
    assert [l.pk for l, _ in again] == [l.pk for l, _ in wanted]
    assert Listener.objects.count() == 3


def test_it_scans_a_big_account_in_a_few_queries_and_writes_nothing_when_nothing_changed(django_assert_max_num_queries):
    account = make_account()
    for _ in range(200):
        make_terminal(account)
    ensure_listeners(account, provider_for(account))
    with django_assert_max_num_queries(2):  # terminals, listeners
        wanted = ensure_listeners(account, provider_for(account))
        # What the supervisor and the runners read of each is loaded already (the rest is deferred)
        assert len({(l.pk, l.account_id, l.name, l.state, l.terminal_id) for l, _ in wanted}) == 200


def test_it_stops_the_listeners_of_terminals_gone_and_revives_them_when_they_return():
    account = make_account()
    kept, gone = make_terminal(account), make_terminal(account)
    ensure_listeners(account, provider_for(account))
    gone.active = False
    gone.save()
    wanted = ensure_listeners(account, provider_for(account))
    assert [l.terminal_id for l, _ in wanted] == [kept.pk]
    assert Listener.objects.get(terminal=gone).state == Listener.State.STOPPED
    gone.active = True
    gone.save()
    wanted = ensure_listeners(account, provider_for(account))
    assert {l.terminal_id: l.state for l, _ in wanted}[gone.pk] == Listener.State.IDLE
    assert Listener.objects.get(terminal=gone).state == Listener.State.IDLE
