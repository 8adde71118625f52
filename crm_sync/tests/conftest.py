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

    monkeypatch.setattr("crm_sync.domain.handoff._enqueue", record)
    return calls


@pytest.fixture
def world(integration, crm):
    """An account, an agent on it known to retailCRM (user 7), a shop and a registered integration."""
    from types import SimpleNamespace

    from crm_sync import domain as crm_domain
    from crm_sync.models import ExternalPhone
    from tests.factories import make_account, make_agent, make_terminal

    crm.add_user(7, firstName="Ann")
    crm.add_site("shop1")
    account = make_account(default_region="FR")
    agent = make_agent(extension_code="100", retailcrm_user_id="7")
    terminal = make_terminal(account, agent=agent, extension="104")
    ExternalPhone.objects.create(integration=integration, site_code="shop1", phone="+74999999999")
    crm_domain.register_integration(integration)
    return SimpleNamespace(integration=integration, crm=crm, account=account, agent=agent, terminal=terminal)
