"""Defaults that are what the README says: hosts served, the run command's URLs, /metrics in production.

``testserver`` was in the default ALLOWED_HOSTS (so a page "from" it passed the websocket origin check);
``runall --port N`` registered http://127.0.0.1:8000 as retailCRM's makeCallUrl and printed :8000 links;
/metrics without a token was open whatever DEBUG said. The compose stack and the image are checked in
tests/test_deployment_files.py (DEBUG=false unless told, secrets required, migrate first, not root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings as django_settings

from tests.support.processes import REPO

pytestmark = pytest.mark.django_db


def settings_of_a_process(**env) -> dict:
    """Settings as a fresh process reads them, with nothing of ours set but ``env``."""
    code = ("import json, django; from django.conf import settings as s; django.setup();"
            "print(json.dumps({k: getattr(s, k) for k in ('ALLOWED_HOSTS', 'METRICS_PUBLIC', 'DEBUG')}))")
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("ALLOWED_HOSTS", "METRICS_PUBLIC", "METRICS_TOKEN", "DEBUG", "DATABASE_URL")}
    child_env.update({"DJANGO_SETTINGS_MODULE": "ctihub.settings", **env})
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_it_serves_only_this_machines_names_by_default_not_testserver(tmp_path):
    assert settings_of_a_process(CTIHUB_VAR_DIR=str(tmp_path))["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]


# --- /metrics ---------------------------------------------------------------------------------


def test_it_closes_metrics_without_a_token_in_production_unless_opened():
    production = {"DEBUG": "false", "SECRET_KEY": "x" * 50,
                  "FIELD_ENCRYPTION_KEY": "Xm2pG1bJ1c5E9Ezn0U6l1ZQ3w3V8n5b2t9h0y8k4r6E="}
    assert settings_of_a_process(**production)["METRICS_PUBLIC"] is False
    assert settings_of_a_process(**production, METRICS_PUBLIC="true")["METRICS_PUBLIC"] is True
    assert settings_of_a_process(DEBUG="true")["METRICS_PUBLIC"] is True


def test_it_refuses_metrics_without_a_token_when_not_public(client, settings):
    settings.METRICS_TOKEN, settings.METRICS_PUBLIC = "", False
    response = client.get("/metrics")
    assert response.status_code == 403 and "METRICS_TOKEN" in response.json()["error"]
    settings.METRICS_PUBLIC = True
    assert client.get("/metrics").status_code == 200
    settings.METRICS_TOKEN, settings.METRICS_PUBLIC = "scrape-token-123", False
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-123").status_code == 200


# --- runall --port ------------------------------------------------------------------------------


class FakeProcess:
    def __init__(self, argv, env=None):
        self.argv, self.env, self.returncode = argv, env, None

    def poll(self):
        return self.returncode

    def send_signal(self, signum):
        self.returncode = 0

    def wait(self, timeout=None):
        return self.returncode

    def kill(self):
        self.returncode = -9


@pytest.fixture
def runall(monkeypatch, settings):
    """``runall`` without its processes: what it starts, prints and has PUBLIC_BASE_URL be at each step."""
    from simulator.management.commands import runall as module

    seen = {"children": {}, "base_url_at": {}}

    def fake_popen(argv, env=None):
        name = {"ctihub.web": "web", "celery": "celery", "simulator": "simulator"}.get(argv[2], argv[2])
        seen["children"].setdefault(name, []).append(FakeProcess(argv, env))
        return seen["children"][name][-1]

    def fake_call_command(name, *args, **kwargs):
        seen["base_url_at"][name] = django_settings.PUBLIC_BASE_URL

    def fake_seed_demo(self, options, children):
        seen["base_url_at"]["_seed_demo"] = django_settings.PUBLIC_BASE_URL

    handlers = {}

    def ctrl_c_at_first_sleep(seconds):
        handlers[module.signal.SIGINT](module.signal.SIGINT, None)

    monkeypatch.setattr(module.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(module, "call_command", fake_call_command)
    monkeypatch.setattr(module.signal, "signal", lambda signum, handler: handlers.__setitem__(signum, handler))
    monkeypatch.setattr(module.time, "sleep", ctrl_c_at_first_sleep)
    monkeypatch.setattr(module.Command, "_seed_demo", fake_seed_demo)
    settings.EMBEDDED_REDIS = False

    def run(*argv, env_base_url=None):
        from io import StringIO

        from django.core.management import call_command

        seen["children"].clear()
        seen["base_url_at"].clear()
        if env_base_url is None:
            monkeypatch.delenv("PUBLIC_BASE_URL", raising=False)
            settings.PUBLIC_BASE_URL = "http://127.0.0.1:8000"  # the import-time default
        else:
            monkeypatch.setenv("PUBLIC_BASE_URL", env_base_url)
            settings.PUBLIC_BASE_URL = env_base_url  # as the process read it
        out = StringIO()
        call_command("runall", *argv, stdout=out)
        seen["output"] = out.getvalue()
        return seen

    return run


def test_runall_makes_the_public_url_follow_its_port_when_none_is_set(runall):
    seen = runall("--port", "8123", "--simulator-port", "8124")
    assert "ctihub is up: http://127.0.0.1:8123/" in seen["output"]
    # The demo admin's link, and makeCallUrl & co. registered with the simulated retailCRM (ensure_demo).
    assert seen["base_url_at"] == {name: "http://127.0.0.1:8123" for name in ("migrate", "ensure_demo_admin",
                                                                              "_seed_demo")}
    for processes in seen["children"].values():
        assert all(p.env["PUBLIC_BASE_URL"] == "http://127.0.0.1:8123" for p in processes)


def test_runall_uses_the_hosts_address_and_keeps_a_public_url_that_is_set(runall):
    seen = runall("--host", "::1", "--port", "8125", "--no-simulator")
    assert "ctihub is up: http://[::1]:8125/" in seen["output"]
    seen = runall("--host", "0.0.0.0", "--port", "8126", "--no-simulator")
    assert "ctihub is up: http://127.0.0.1:8126/" in seen["output"]
    seen = runall("--port", "8127", "--no-simulator", env_base_url="https://hub.example.com")
    assert "ctihub is up: https://hub.example.com/" in seen["output"]
    assert all(p.env["PUBLIC_BASE_URL"] == "https://hub.example.com" for p in seen["children"]["web"])
