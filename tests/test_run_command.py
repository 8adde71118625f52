"""The newcomer's run command: embedded defaults, everything up, a page served, a clean stop."""

import os
import signal
import sys

import pytest
import requests

from tests.support.processes import REPO, ManagedProcess, free_port, wait_for


@pytest.mark.e2e
def test_it_runs_the_whole_hub_on_embedded_defaults_and_serves_the_admin_login(tmp_path):
    web_port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "FIELD_ENCRYPTION_KEY")}
    env.update({"CTIHUB_VAR_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1", "PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}"})
    hub = ManagedProcess(
        f"runall-{web_port}",  # a log of its own: an older run's lines must not satisfy the waits
        [sys.executable, "manage.py", "runall", "--port", str(web_port), "--simulator-port", str(sim_port)],
        env,
    )
    try:
        login = wait_for(
            lambda: (r := requests.get(f"http://127.0.0.1:{web_port}/admin/login/", timeout=2)).status_code == 200 and r,
            timeout=90, what="the admin login page",
        )
        assert 'name="username"' in login.text
        health = requests.get(f"http://127.0.0.1:{web_port}/healthz", timeout=5)
        assert health.status_code == 200, health.text
        assert requests.get(f"http://127.0.0.1:{sim_port}/_sim/health", timeout=5).status_code == 200
        wait_for(lambda: "ready." in hub.log(), timeout=60, what="the celery worker")
        assert (tmp_path / "ctihub.sqlite3").exists()
        assert (tmp_path / "redis.sock").exists()
        password = (tmp_path / "demo-admin-password").read_text().strip()
        assert f"user admin  password {password}" in hub.log()
        session = requests.Session()
        session.get(f"http://127.0.0.1:{web_port}/admin/login/", timeout=5)
        logged_in = session.post(
            f"http://127.0.0.1:{web_port}/admin/login/?next=/admin/",
            data={"username": "admin", "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
            timeout=10,
        )
        assert "Site administration" in logged_in.text
    finally:
        code = hub.stop(sig=signal.SIGINT, timeout=30)
    assert code == 0, hub.log()[-3000:]
    assert not (tmp_path / "redis.sock").exists() or not _answers(tmp_path / "redis.sock")


def _answers(path) -> bool:
    from ctihub.embedded_redis import is_answering

    return is_answering(path)
