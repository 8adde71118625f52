"""What a console's resync asks the database (``console.cards_newer_than_shown``, ``cards_changed``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from telephony import console
from telephony.models import Call
from tests.factories import make_account, make_agent, make_call

pytestmark = pytest.mark.django_db


def test_it_returns_only_the_viewers_cards_newer_than_shown_and_older_than_the_grace():
    account = make_account()
    me, other = make_agent(), make_agent()
    now = timezone.now()
    shown_live = make_call(account, agent=me, pbx_call_id="-1", state=Call.State.TALKING, version=3)
    shown_up_to_date = make_call(account, agent=me, pbx_call_id="-2", state=Call.State.TALKING, version=2)
    never_shown = make_call(account, agent=me, pbx_call_id="-3", state=Call.State.RINGING, version=1)
    in_flight = make_call(account, agent=me, pbx_call_id="-4", state=Call.State.RINGING, version=1)
    not_mine = make_call(account, agent=other, pbx_call_id="-5", state=Call.State.RINGING, version=1)
    Call.objects.exclude(pk=in_flight.pk).update(updated_at=now - timedelta(seconds=5))

    viewer = console.Viewer(me.user, me)
    cards = console.cards_newer_than_shown(
        viewer, {shown_live.pk: 2, shown_up_to_date.pk: 2}, {shown_live.pk, shown_up_to_date.pk},
        since=now - timedelta(seconds=20), until=now - timedelta(seconds=3),
    )
    assert [(c["id"], c["version"]) for c in cards] == [(shown_live.pk, 3), (never_shown.pk, 1)]
    assert not_mine.pk not in {c["id"] for c in cards}


def test_it_finds_a_supervisors_changed_calls_through_an_index():
    """A supervisor sees every call: without an index on updated_at each resync would read the whole table."""
    admin = get_user_model().objects.create_superuser("boss", password="x-123-456-789")
    viewer = console.Viewer(admin, None)
    now = timezone.now()
    query = viewer.visible_calls().filter(updated_at__gte=now - timedelta(seconds=20), updated_at__lt=now)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = query.explain()
    assert "call_updated" in plan, plan
