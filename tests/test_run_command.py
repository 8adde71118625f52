"""The newcomer's run command: embedded defaults, everything up, the demo a newcomer sees, a clean stop.

One ``runall`` serves both (each start migrates a fresh SQLite database and starts five processes, the
suite's longest start): the hub on embedded defaults, its admin login, and the demo on top of it, a seeded
enterprise with agent logins, traffic, and the simulated retailCRM.
"""

import json
import os
import signal
import sqlite3
import sys

import pytest
import requests

from tests.support.processes import ManagedProcess, free_port, wait_for


@pytest.mark.e2e
def test_it_runs_the_whole_hub_on_embedded_defaults_with_the_demo_and_serves_the_admin_and_agent_logins(tmp_path):
    web_port, sim_port = free_port(), free_port()
    web, sim = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{sim_port}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "FIELD_ENCRYPTION_KEY")}
    env.update({"CTIHUB_VAR_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1", "PUBLIC_BASE_URL": web})
    hub = ManagedProcess(
        f"runall-{web_port}",  # a log of its own: an older run's lines must not satisfy the waits
        [sys.executable, "manage.py", "runall", "--port", str(web_port), "--simulator-port", str(sim_port),
         "--demo-traffic", "--demo-calls-per-minute", "120", "--demo-crm"],
        env,
    )
    try:
        # The hub on embedded defaults: every process up, the admin's login working.
        login = wait_for(lambda: (r := requests.get(f"{web}/admin/login/", timeout=2)).status_code == 200 and r,
                         timeout=90, what="the admin login page")
        assert 'name="username"' in login.text
        health = requests.get(f"{web}/healthz", timeout=5)
        assert health.status_code == 200, health.text
        assert requests.get(f"{sim}/_sim/health", timeout=5).status_code == 200
        wait_for(lambda: "ready." in hub.log(), timeout=60, what="the celery worker")
        assert (tmp_path / "ctihub.sqlite3").exists()
        assert (tmp_path / "redis.sock").exists()
        password = (tmp_path / "demo-admin-password").read_text().strip()
        assert f"user admin  password {password}" in hub.log()
        session = requests.Session()
        session.get(f"{web}/admin/login/", timeout=5)
        logged_in = session.post(
            f"{web}/admin/login/?next=/admin/",
            data={"username": "admin", "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
            timeout=10,
        )
        assert "ctihub at a glance" in logged_in.text  # the admin index (ctihub.admin_site)

        # The demo: agents' logins, calls played to their end, retailCRM told of them.
        wait_for(lambda: "ctihub is up" in hub.log() or not hub.alive(), 90, what="the demo to start")
        passwords = json.loads((tmp_path / "demo-agents.json").read_text())
        for name in ("alice", "bruno", "chloe", "david", "supervisor"):
            assert f"user {name}  password {passwords[name]}" in hub.log()

        def calls_by_state():
            with sqlite3.connect(tmp_path / "ctihub.sqlite3") as db:
                return dict(db.execute("SELECT state, count(*) FROM telephony_call GROUP BY state").fetchall())

        wait_for(lambda: calls_by_state().get("ended", 0) >= 3, 90, interval=1, what="demo calls to end")

        def event_types():
            events = requests.get(f"{sim}/_sim/retailcrm/events", timeout=5).json()
            return {e["event"]["type"] for e in events}

        # A hangup event leaves through Celery after its call ended: on a busy machine it came after the third end.
        wait_for(lambda: event_types() >= {"in", "hangup"}, 60, interval=1, what="in and hangup events at retailCRM")
        agent = requests.Session()
        agent.get(f"{web}/login/", timeout=5)
        console = agent.post(f"{web}/login/", timeout=10, data={
            "username": "alice", "password": passwords["alice"], "csrfmiddlewaretoken": agent.cookies["csrftoken"]})
        assert 'id="cards"' in console.text  # alice lands on her console
    finally:
        code = hub.stop(sig=signal.SIGINT, timeout=30)
    assert code == 0, hub.log()[-3000:]
    assert not (tmp_path / "redis.sock").exists() or not _answers(tmp_path / "redis.sock")


def _answers(path) -> bool:
    from ctihub.lib.embedded_redis import is_answering

    return is_answering(path)
