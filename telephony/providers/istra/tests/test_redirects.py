"""A permanent redirect moves a myRCC account for good (REST and websocket, every later session); a 302 does not.

The simulator is one server reached under two names: ``127.0.0.1`` (the account's base URL) and ``localhost``
(where it says the account moved). Its request log keeps each request's ``Host`` header, which shows the host
the client used.
"""

from __future__ import annotations

import pytest

from telephony import control
from telephony.models import PbxAccount
from telephony.providers import provider_for
from telephony.providers.base import ListenerSpec
from tests.factories import make_account
from tests.simulator.conftest import running_simulator, sim  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db

EXTENSION = "5985841581756135023"


@pytest.fixture
def rcc(sim):
    world = sim.state.istra
    world.add_user("rccadmin", "pw", enterprise="e1")
    world.add_extension(EXTENSION, "144", label="Desk", enterprise="e1")
    account = make_account(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=sim.istra_base, login="rccadmin",
                           password="pw", enterprise="e1")
    yield world, account
    control.forget_providers()


def hosts(world) -> list[tuple[str, str]]:
    """(Host header, path) of every request the simulated platform received, in order."""
    return [({k.lower(): v for k, v in e["headers"].items()}["host"], e["path"]) for e in world.requests_received()]


def listen_once(account: PbxAccount) -> None:
    provider = provider_for(PbxAccount.objects.get(pk=account.pk))  # a later session, as another process builds it
    stream = provider.open_stream(ListenerSpec(name="CallLines"))
    provider.close_stream(ListenerSpec(name="CallLines"), stream)
    provider.close()


def test_it_sends_every_later_request_and_the_websocket_straight_to_where_a_301_moved_the_account(sim, rcc):
    world, account = rcc
    old, new = f"127.0.0.1:{sim.port}", f"localhost:{sim.port}"
    world.redirect_next(1, status=301, base_url=f"http://{new}", app="myRCC")
    provider = provider_for(account)
    assert [t.pbx_id for t in provider.fetch_terminals()] == [EXTENSION]  # its Login was moved
    provider.close()
    listen_once(account)

    seen = hosts(world)
    assert seen[0] == (old, "/restletrouter/v1/service/Login")
    assert {host for host, _ in seen[1:]} == {new}  # nothing more to the old host: REST, logout, websocket
    assert (new, "/restletrouter/ws-service/myRCC") in seen
    account.refresh_from_db()
    assert account.redirected_base_url == f"http://{new}/restletrouter"
    assert account.redirected_at is not None


def test_it_follows_a_302_but_goes_back_to_the_base_url_for_the_next_request(sim, rcc):
    world, account = rcc
    old, new = f"127.0.0.1:{sim.port}", f"localhost:{sim.port}"
    world.redirect_next(1, status=302, base_url=f"http://{new}", app="myRCC")
    provider = provider_for(account)
    provider.fetch_terminals()
    provider.close()
    listen_once(account)

    seen = hosts(world)
    assert seen[:2] == [(old, "/restletrouter/v1/service/Login"), (new, "/restletrouter/v1/service/Login")]
    assert {host for host, _ in seen[2:]} == {old}
    assert (old, "/restletrouter/ws-service/myRCC") in seen
    assert PbxAccount.objects.get(pk=account.pk).redirected_base_url == ""


def test_it_goes_back_to_the_base_url_once_an_admin_edits_it(sim, rcc, admin_client):
    world, account = rcc
    new = f"localhost:{sim.port}"
    world.redirect_next(1, status=301, base_url=f"http://{new}", app="myRCC")
    provider_for(account).test_connection()
    form = {
        "name": account.name, "kind": account.kind, "enabled": "on", "base_url": f"{sim.istra_base}/",
        "ws_url": "", "enterprise": "e1", "login": "rccadmin", "ca_bundle": "", "default_region": "", "password": "",
        "api_token": "", "webhook_secret": "", "terminals-TOTAL_FORMS": "0", "terminals-INITIAL_FORMS": "0",
        "listeners-TOTAL_FORMS": "0", "listeners-INITIAL_FORMS": "0",
    }
    page = admin_client.get(f"/admin/telephony/pbxaccount/{account.pk}/change/").content.decode()
    assert f"http://{new}/restletrouter" in page and "Forget the remembered redirect" in page
    saved = admin_client.post(f"/admin/telephony/pbxaccount/{account.pk}/change/", form)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert PbxAccount.objects.get(pk=account.pk).redirected_base_url == ""
    world.clear_requests()
    listen_once(account)
    assert {host for host, _ in hosts(world)} == {f"127.0.0.1:{sim.port}"}
