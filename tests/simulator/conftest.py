"""Fixtures for the simulator's own tests: one real server per test session, reset per test."""

from __future__ import annotations

import pytest

from simulator.harness import RunningSimulator


@pytest.fixture(scope="session")
def running_simulator():
    """The simulator on 127.0.0.1 (ephemeral port), served from a background thread."""
    with RunningSimulator() as sim:
        yield sim


@pytest.fixture
def sim(running_simulator):
    running_simulator.state.istra.reset()
    yield running_simulator
    running_simulator.state.istra.reset()
