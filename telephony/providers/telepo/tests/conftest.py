"""The real simulator (one per test session, in a thread), its Telepo world reset per test, and an account on it."""

from __future__ import annotations

import pytest

from telephony.models import PbxAccount
from tests.factories import make_account, make_agent, make_terminal
from tests.simulator.conftest import running_simulator  # noqa: F401 (fixture)
from tests.support.telepo_sim import DOMAIN, TICKET

ALICE = "alice@organization.org"
DEVICE = "10.3rd_party_phone"
SECRET = "whsec-3f9a1c0b7d"


@pytest.fixture
def world(running_simulator):
    world = running_simulator.state.telepo
    world.reset()
    world.add_ticket(TICKET, DOMAIN)
    world.add_user(ALICE, DOMAIN, email="alice@organization.com", number="+12202",
                   devices={DEVICE: "SOFT", "+1555555": "MOBILE"})
    yield world
    world.reset()


@pytest.fixture
def account(db, running_simulator, world):
    return make_account(kind=PbxAccount.Kind.TELEPO, base_url=running_simulator.url, enterprise=DOMAIN,
                        login="", password="", api_token=TICKET, webhook_secret=SECRET, default_region="FR")


@pytest.fixture
def agent(db):
    return make_agent("alice")


@pytest.fixture
def terminal(account, agent):
    return make_terminal(account, pbx_id=ALICE, extension=DEVICE, label="Alice", agent=agent)


@pytest.fixture
def queued(monkeypatch) -> list[tuple[str, tuple]]:
    """Telepo tasks that would be queued, recorded instead of sent to Redis."""
    calls: list[tuple[str, tuple]] = []

    def record(task, *args, countdown=None):
        calls.append((task.name.rsplit(".", 1)[-1], args))
        return True

    monkeypatch.setattr("telephony.providers.telepo.tasks.enqueue", record)
    return calls
