"""A refused Telepo action (issue 14, point 4): ``"event": "FAILED"`` in a 200 answer is an error, not success.

The spec's own sample (``fixtures/transfer_answer.json``: "Call setup failed with
status code 504") goes through the provider; the simulator answers FAILED on
demand, and the refusal is followed to the agent's console (to makeCallUrl:
``crm_sync/tests/test_telepo_refusals.py``, the layer above).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from ctihub.asgi import application
from telephony import control
from telephony import updates as u
from telephony.models import Call, PbxAccount
from telephony.providers import provider_for
from telephony.providers.base import ActionRefused, ProviderError
from telephony.providers.telepo.reconcile import reconcile_user
from telephony.providers.telepo.tests.conftest import ALICE, DEVICE, SECRET
from tests.factories import make_account, make_agent, make_terminal
from tests.support.telepo_sim import DOMAIN, TICKET

FIXTURES = Path(__file__).parent / "fixtures"
SPEC_DESCRIPTION = "Call setup failed with status code 504"


class Answer:
    """What ``requests`` would give for a 200 with ``text``."""

    status_code = 200

    def __init__(self, text: str):
        self.text = text
        self.content = text.encode()

    def json(self):
        return json.loads(self.text)


class RecordedTelepo:
    """An HttpClient that answers every request with one recorded body."""

    def __init__(self, text: str):
        self.text = text
        self.requests: list[tuple[str, str]] = []

    def request(self, method, url, **kwargs):
        self.requests.append((method, url))
        return Answer(self.text)


def talking(world):
    call = world.incoming_call(ALICE, "+33612345678")
    return world.answer(call.call_id)


def hub_call(account, sim_call) -> Call:
    reconcile_user(account, ALICE)
    return Call.objects.select_related("terminal").get(account=account, pbx_call_id=sim_call.call_id)


# --- the provider -------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_it_reports_the_specs_failed_answer_as_a_permanent_error_with_telepos_description(
    account, terminal, world, queued
):
    call = hub_call(account, talking(world))
    before = (call.state, call.state_token, call.version)
    telepo = RecordedTelepo((FIXTURES / "transfer_answer.json").read_text())
    with pytest.raises(ProviderError) as refused:
        provider_for(account, http=telepo).call_action(call, u.HOLD, {})
    assert str(refused.value) == f"Telepo refused hold: {SPEC_DESCRIPTION}"
    assert (refused.value.permanent, refused.value.code) == (True, "FAILED")
    call.refresh_from_db()
    # The refusal's RINGING is no news about this call; the snapshot is asked for instead.
    assert (call.state, call.state_token, call.version) == before
    assert queued == [("reconcile_user_task", (account.pk, ALICE))]


@pytest.mark.django_db
def test_it_reports_a_hold_the_simulator_refuses_and_changes_nothing(account, terminal, world, queued):
    sim_call = talking(world)
    call = hub_call(account, sim_call)
    world.fail_next("hold", "Hold is not allowed for this call")
    with pytest.raises(ProviderError, match="^Telepo refused hold: Hold is not allowed for this call$"):
        provider_for(account).call_action(call, u.HOLD, {})
    assert world.call(sim_call.call_id).status == "ACTIVE"
    provider_for(account).call_action(call, u.HOLD, {})  # one refusal only: the next hold goes through
    assert world.call(sim_call.call_id).status == "HELD"


@pytest.mark.django_db
@pytest.mark.parametrize("status", [400, 422])
def test_it_asks_for_the_snapshot_when_a_stale_token_is_refused_with_another_status_than_409(
        account, terminal, world, queued, status):
    # The spec says only that a request with a stale stateToken "will fail". Refused with a 400 or 422, the hub
    # kept its stale token, and the agent's every click failed the same way until the next periodic snapshot.
    sim_call = talking(world)
    call = hub_call(account, sim_call)
    world.set_mismatch_status(status)
    alice = world.users[ALICE]
    world.act(alice, "hold", sim_call.call_id, {})  # the call moves on at the PBX, its token with it
    world.act(alice, "resume", sim_call.call_id, {})
    with pytest.raises(ActionRefused) as refused:
        provider_for(account).call_action(call, u.HOLD, {})
    assert (refused.value.status, refused.value.code) == (status, "STATE_TOKEN_MISMATCH")
    assert queued == [("reconcile_user_task", (account.pk, ALICE))]
    from telephony.providers.telepo import tasks

    tasks.reconcile_user_task(*queued[0][1])  # the snapshot the provider asked for, run as the worker would
    call = Call.objects.select_related("terminal").get(account=account, pbx_call_id=sim_call.call_id)
    provider_for(account).call_action(call, u.HOLD, {})
    assert world.call(sim_call.call_id).status == "HELD"


@pytest.mark.django_db
def test_it_reports_a_make_call_the_simulator_refuses(account, terminal, world):
    world.fail_next("make")
    with pytest.raises(ProviderError, match=f"^Telepo refused make: {SPEC_DESCRIPTION}$") as refused:
        provider_for(account).place_call(ALICE, "0612345678")
    assert refused.value.permanent and world.calls == {}


# --- the agent's console ------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_it_shows_the_agent_telepos_reason_when_it_refuses_an_action(running_simulator, world, queued):
    account = make_account(kind=PbxAccount.Kind.TELEPO, base_url=running_simulator.url, enterprise=DOMAIN, login="",
                           password="", api_token=TICKET, webhook_secret=SECRET, default_region="FR")
    agent = make_agent("alice")
    make_terminal(account, pbx_id=ALICE, extension=DEVICE, agent=agent)
    call = hub_call(account, talking(world))
    world.fail_next("hold", "Hold rejected: the call is being recorded")
    client = Client()
    client.force_login(agent.user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()

    async def scenario():
        comm = WebsocketCommunicator(application, "/ws/console/",
                                     headers=[(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000"),
                                              (b"cookie", cookie)])
        connected, _ = await comm.connect()
        assert connected
        await comm.receive_json_from(timeout=5)  # the snapshot
        await comm.send_json_to({"id": 5, "action": "call_action", "call": call.pk, "name": "hold"})
        while (message := await comm.receive_json_from(timeout=10))["type"] != "result":
            pass
        await comm.disconnect()
        return message

    try:
        result = asyncio.run(scenario())
    finally:
        control.forget_providers()
    assert result == {"type": "result", "id": 5, "ok": False,
                      "error": "PBX: Telepo refused hold: Hold rejected: the call is being recorded"}
