"""Benchmark 5: a backlog of finished calls drained into retailCRM once it is back.

    .venv/bin/python -m bench.upload_backlog [--calls 10000] [--workers 2]

The simulated retailCRM (real HTTP on loopback, enforcing 40 requests/s on
/telephony/* and the 50-call limit) receives the uploads; ``--workers`` threads
drain the outbox at once, as several Celery workers would, sharing the Redis
token bucket. Figures: requests made (target calls/50), time to drain, the most
requests seen in any second, limit errors (target 0), duplicates (target 0).
"""

from __future__ import annotations

import argparse
import threading
import time

from bench.common import figure, setup_django


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    setup_django()
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from accounts.models import Agent
    from crm_sync import domain as crm_domain
    from crm_sync.models import CrmCallSync, RetailCrmIntegration
    from simulator.harness import RunningSimulator
    from telephony.models import Call, PbxAccount
    from tests.support.retailcrm_sim import API_KEY, RetailCrmControl

    with RunningSimulator() as sim:
        crm = RetailCrmControl(sim.url)
        crm.reset()
        crm.add_api_key(API_KEY)
        crm.add_user(7)
        account = PbxAccount.objects.create(name="bench", kind=PbxAccount.Kind.TELEPO, base_url="http://127.0.0.1:1")
        user = get_user_model().objects.create_user("bench-agent")
        agent = Agent.objects.create(user=user, extension_code="101", retailcrm_user_id="7")
        integration = RetailCrmIntegration.objects.create(name="bench", crm_url=sim.url, api_key=API_KEY)
        now = timezone.now()
        calls = Call.objects.bulk_create(
            Call(account=account, pbx_call_id=f"-{n}", agent=agent, direction=Call.Direction.INBOUND,
                 state=Call.State.ENDED, remote_number_e164="+33612345678", created_at=now - timedelta(minutes=30),
                 answered_at=now - timedelta(minutes=29), ended_at=now - timedelta(minutes=25), ringing_ms=60000,
                 talking_ms=240000, end_cause="hangup")
            for n in range(args.calls)
        )
        CrmCallSync.objects.bulk_create(
            CrmCallSync(integration=integration, call=call, outbox_at=now, events_skipped="bench")
            for call in calls
        )
        connection.close()
        crm_requests_before = crm.stats()["requests"]
        reports = []

        def drain():
            try:
                reports.append(crm_domain.upload_outbox(integration.pk))
            finally:
                connection.close()

        started = time.perf_counter()
        threads = [threading.Thread(target=drain) for _ in range(args.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        stats = crm.stats()
        uploaded = len(crm.calls())
    figure("calls", args.calls)
    figure("upload_requests", stats["requests"] - crm_requests_before, "", f"{-(-args.calls // 50)}")
    figure("calls_uploaded", uploaded, "", str(args.calls))
    figure("drain_seconds", elapsed, "s")
    figure("max_telephony_requests_in_any_second", stats["maxPerSecond"]["telephony"], "", "<= 40")
    figure("limit_errors", stats["rateLimited"], "", "0")
    figure("duplicates", sum(r.duplicates for r in reports), "", "0")


if __name__ == "__main__":
    from bench.common import run

    run(main)
