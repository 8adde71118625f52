"""Fixtures of the telephony core's tests."""

from __future__ import annotations

import pytest

from telephony import plugins


@pytest.fixture
def committed():
    """The calls each ``calls_committed`` carried: [(call id, state), ...] a send."""
    sends = []

    def receiver(sender, calls, **kwargs):
        sends.append([(call.pk, call.state) for call in calls])

    plugins.calls_committed.connect(receiver, weak=False, dispatch_uid="test-committed")
    yield sends
    plugins.calls_committed.disconnect(dispatch_uid="test-committed")
