"""Fixtures of the telephony core's tests."""

from __future__ import annotations

import pytest

from telephony import plugins
from telephony.sockets import database, runner


class InlineDb:
    """The database threads' ``run``, done on the calling thread (its own connection, the test's transaction)."""

    def run(self, operation):
        return operation()


@pytest.fixture
def inline_db(monkeypatch):
    """Every way of the socket code to the database threads (``db_workers``), run inline instead."""
    monkeypatch.setattr(database, "db_workers", InlineDb)
    monkeypatch.setattr(runner, "db_workers", InlineDb)


@pytest.fixture
def committed():
    """The calls each ``calls_committed`` carried: [(call id, state), ...] a send."""
    sends = []

    def receiver(sender, calls, **kwargs):
        sends.append([(call.pk, call.state) for call in calls])

    plugins.calls_committed.connect(receiver, weak=False, dispatch_uid="test-committed")
    yield sends
    plugins.calls_committed.disconnect(dispatch_uid="test-committed")
