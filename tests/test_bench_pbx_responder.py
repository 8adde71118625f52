"""The benchmarks' PBX responder (bench/pbx_responder.py): placeCall answered as the simulator answered it."""

import sys

import pytest
import requests

from tests.support.processes import ManagedProcess, free_port, http_ok, simulator_process, wait_for
from tests.support.sim_control import IstraControl

pytestmark = pytest.mark.e2e


@pytest.fixture
def simulator_and_responder():
    sim_port, port = free_port(), free_port()
    sim = simulator_process(sim_port)
    sim_url, url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{port}"
    responder = ManagedProcess(f"pbx-responder-test-{port}", [sys.executable, "-m", "bench.pbx_responder", "--port",
                                                               str(port), "--upstream", sim_url], {})
    try:
        wait_for(lambda: http_ok(f"{sim_url}/_sim/health"), 30, what="the simulator")
        wait_for(lambda: http_ok(f"{url}/_sim/health"), 30, what="the responder")
        yield sim_url, url
    finally:
        responder.stop()
        sim.stop()


def test_it_answers_place_call_with_the_simulators_own_answer(simulator_and_responder, db):
    # The benchmark's PBX side must answer what the spec and the simulator answer, only cheaper.
    from telephony.models import PbxAccount
    from telephony.providers import provider_for

    sim_url, url = simulator_and_responder
    sim = IstraControl(sim_url)
    sim.add_user("rccadmin", "s3cret", enterprise="acme", myrcc=True)
    sim.add_extension("897778778", "101", enterprise="acme", myrcc=True)
    account = PbxAccount.objects.create(name="bench", kind=PbxAccount.Kind.ISTRA_MYRCC, enterprise="acme",
                                        base_url=f"{url}/restletrouter", login="rccadmin", password="s3cret")
    provider = provider_for(account)
    first = provider.place_call("897778778", "+33612345678")  # login and this one: the simulator's answers
    again = [provider.place_call("897778778", "+33612345678") for _ in range(3)]
    assert first["state"] == "prompting" and first["extensionURI"] == "v1/rcc/Extension/897778778"
    assert again == [first] * 3
    stats = requests.get(f"{url}/_responder/stats", timeout=10).json()
    assert stats["answered"] == 3 and stats["forwarded"] >= 2  # the login went to the simulator
    assert stats["place_call_answer"]["status"] == 200
    # It checks no session once it has an answer: the benchmark's PBX, not a PBX (the benchmark says so).
    fresh = requests.post(f"{url}/restletrouter/v1/rcc/Extension/897778778/placeCall", json={"destination": "1"},
                          timeout=10)
    assert fresh.status_code == 200
