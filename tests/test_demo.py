"""The demo a newcomer sees: a seeded enterprise with agent logins, traffic, and the simulated retailCRM."""

import json
import os
import signal
import sqlite3
import sys

import pytest
import requests

from tests.support.processes import ManagedProcess, free_port, wait_for


@pytest.mark.e2e
def test_it_runs_the_demo_with_traffic_and_the_simulated_retailcrm(tmp_path):
    web_port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "FIELD_ENCRYPTION_KEY")}
    env.update({"CTIHUB_VAR_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1", "PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}"})
    hub = ManagedProcess(f"demo-{web_port}", [sys.executable, "manage.py", "runall", "--port", str(web_port), "--simulator-port",
                                  str(sim_port), "--demo-traffic", "--demo-calls-per-minute", "120", "--demo-crm"], env)
    try:
        wait_for(lambda: "ctihub is up" in hub.log() or not hub.alive(), 90, what="the demo to start")
        passwords = json.loads((tmp_path / "demo-agents.json").read_text())
        for name in ("alice", "bruno", "chloe", "david", "supervisor"):
            assert f"user {name}  password {passwords[name]}" in hub.log()

        def calls_by_state():
            with sqlite3.connect(tmp_path / "ctihub.sqlite3") as db:
                return dict(db.execute("SELECT state, count(*) FROM telephony_call GROUP BY state").fetchall())

        wait_for(lambda: calls_by_state().get("ended", 0) >= 3, 90, interval=1, what="demo calls to end")
        def event_types():
            events = requests.get(f"http://127.0.0.1:{sim_port}/_sim/retailcrm/events", timeout=5).json()
            return {e["event"]["type"] for e in events}

        # A hangup event leaves through Celery after its call ended: on a busy machine it came after the third end.
        wait_for(lambda: event_types() >= {"in", "hangup"}, 60, interval=1, what="in and hangup events at retailCRM")
        session = requests.Session()
        session.get(f"http://127.0.0.1:{web_port}/login/", timeout=5)
        console = session.post(f"http://127.0.0.1:{web_port}/login/", timeout=10, data={
            "username": "alice", "password": passwords["alice"], "csrfmiddlewaretoken": session.cookies["csrftoken"]})
        assert 'id="cards"' in console.text  # alice lands on her console
    finally:
        code = hub.stop(sig=signal.SIGINT, timeout=30)
    assert code == 0, hub.log()[-3000:]
