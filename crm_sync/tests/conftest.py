"""Fixtures for the retailCRM side: the real simulator (in a thread), an integration pointing at it,
and recorders for what would be queued or published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crm_sync.models import RetailCrmIntegration
from simulator.harness import RunningSimulator
from tests.support.retailcrm_sim import API_KEY, RetailCrmControl

FIXTURES = Path(__file__).with_name("fixtures")


def fixture_json(name: str):
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="session")
def running_simulator():
    with RunningSimulator() as sim:
        yield sim


@pytest.fixture
def crm(running_simulator) -> RetailCrmControl:
    """The simulated retailCRM, reset, with our API key known."""
    control = RetailCrmControl(running_simulator.url)
    control.reset()
    control.add_api_key(API_KEY)
    yield control
    control.reset()


@pytest.fixture
def integration(db, crm, settings) -> RetailCrmIntegration:
    settings.PUBLIC_BASE_URL = "https://hub.example.com"
    return RetailCrmIntegration.objects.create(
        name="shop", crm_url=crm.url, api_key=API_KEY, module_code="ctihub", client_id="client-id-0123456789"
    )


@pytest.fixture
def queued(monkeypatch) -> list[tuple[str, tuple]]:
    """Tasks crm_sync would queue, recorded instead of sent to Redis."""
    calls: list[tuple[str, tuple]] = []

    def record(task, *args, countdown=None):
        calls.append((task.name.rsplit(".", 1)[-1], args))
        return True

    monkeypatch.setattr("crm_sync.services._enqueue", record)
    return calls

