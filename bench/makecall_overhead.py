"""Benchmark 4: what ctihub's makeCallUrl adds on top of the PBX's own answer.

    .venv/bin/python -m bench.makecall_overhead [--rate 200] [--seconds 10]

Real parts: the simulator (myRCC placeCall) and daphne on PostgreSQL and Redis.
Two runs at the same rate from the same thread pool: first placeCall sent
straight to the simulated PBX through ctihub's own Istra session (the PBX's own
answer time), then retailCRM's ``GET /api/retailcrm/make-call`` to daphne, which
places the same call. The overhead figures are the differences of the two runs'
percentiles. daphne runs as in production (``DEBUG=false``, ``WEB_POOL_THREADS``
from the environment or its default) and answers one click before the timing
starts, so its login to the PBX is not in the figures. The 1-minute load average
is printed after each run: on a shared machine it says how much the figures are worth,
and so does ``web_cpu_per_request`` (daphne's CPU time over the run divided by its
requests), which depends far less on what else the machine runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import time

import requests

from bench.common import figure, no_pauses_of_our_own, percentiles, setup_django

AGENT_EXTENSION = "897778778"


def timed_run(rate: float, seconds: float, send) -> tuple[list[float], int]:
    latencies, errors = [], 0
    interval, total = 1.0 / rate, int(rate * seconds)

    def one():
        t0 = time.perf_counter()
        ok = send()
        return (time.perf_counter() - t0) * 1000, ok

    with no_pauses_of_our_own(), concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        start = time.perf_counter()
        futures = []
        for n in range(total):
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one))
        for future in futures:
            ms, ok = future.result()
            latencies.append(ms)
            errors += not ok
        achieved = total / (time.perf_counter() - start)
    figure("achieved_rate", achieved, "req/s")
    figure("load_average_1min", os.getloadavg()[0])
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    setup_django()
    import psutil
    from django.contrib.auth import get_user_model

    from accounts.models import Agent
    from bench.procs import BenchHub, hub_env
    from crm_sync.models import RetailCrmIntegration
    from telephony import control
    from telephony.models import PbxAccount, Terminal
    from telephony.providers import provider_for
    from tests.support.sim_control import IstraControl

    # The public-endpoint rate limit (PUBLIC_RATE_LIMIT_PER_SECOND) is not what this measures.
    hub = BenchHub(hub_env(LISTENER_SUPERVISOR="false", PUBLIC_RATE_LIMIT_PER_SECOND="100000", DEBUG="false"))
    try:
        hub.start_simulator()
        sim = IstraControl(hub.sim_url)
        sim.add_user("rccadmin", "s3cret", enterprise="acme", myrcc=True)
        sim.add_extension(AGENT_EXTENSION, "101", enterprise="acme", myrcc=True)
        account = PbxAccount.objects.create(name="bench", kind=PbxAccount.Kind.ISTRA_MYRCC, enterprise="acme",
                                            base_url=f"{hub.sim_url}/restletrouter", login="rccadmin", password="s3cret")
        control.sync_terminals(account)
        agent = Agent.objects.create(user=get_user_model().objects.create_user("ann"), extension_code="101",
                                     retailcrm_user_id="7")
        Terminal.objects.filter(account=account, pbx_id=AGENT_EXTENSION).update(agent=agent)
        integration = RetailCrmIntegration.objects.create(name="bench", crm_url=hub.sim_url, api_key="k" * 32)
        web = psutil.Process(hub.start_web().process.pid)

        provider = provider_for(account)
        provider.test_connection()  # log in before timing
        print("# straight to the PBX (placeCall through ctihub's Istra session)")
        direct, direct_errors = timed_run(args.rate, args.seconds, lambda: bool(
            provider.place_call(AGENT_EXTENSION, "+33612345678") is not None))
        percentiles(direct, "pbx_answer")

        http = requests.Session()
        http.mount("http://", requests.adapters.HTTPAdapter(pool_connections=64, pool_maxsize=64))
        url = (f"{hub.web_url}/api/retailcrm/make-call?clientId={integration.client_id}&code=101"
               f"&phone=%2B33612345678&userId=7")
        warm_up = http.get(url, timeout=10)
        assert warm_up.status_code == 200, warm_up.text
        print("# through ctihub's makeCallUrl")
        cpu_before = sum(web.cpu_times()[:2])
        via_hub, hub_errors = timed_run(args.rate, args.seconds, lambda: http.get(url, timeout=10).status_code == 200)
        percentiles(via_hub, "makecall")
        figure("web_cpu_per_request", (sum(web.cpu_times()[:2]) - cpu_before) * 1000 / len(via_hub), "ms")
    finally:
        hub.stop()
    direct.sort()
    via_hub.sort()

    def pct(values, p):
        return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

    figure("errors", direct_errors + hub_errors, "", "0")
    figure("errors_through_ctihub", hub_errors)
    figure("overhead_p50", pct(via_hub, 50) - pct(direct, 50), "ms")
    figure("overhead_p99", pct(via_hub, 99) - pct(direct, 99), "ms", "<= 20")


if __name__ == "__main__":
    from bench.common import run

    run(main)
