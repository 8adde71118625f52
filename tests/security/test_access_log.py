"""daphne's access log (stdout, outside Python's logging) never shows a credential in a URL."""

from __future__ import annotations

import io
from datetime import datetime

import pytest
import requests

from ctihub.web import MaskedAccessLog
from tests.support.processes import daphne_process, free_port, http_ok, subprocess_env, wait_for

CLIENT_ID = "client-id-0d3e7a91f2"
WEBHOOK_SECRET = "telepo-hook-77c1b0e4d2"
RECORD_TOKEN = "record-sig-5a2c9e10b7"


def entry_for(request_line: str) -> str:
    stream = io.StringIO()
    MaskedAccessLog(stream).write_entry("127.0.0.1:5000", datetime.now(), request_line, 200, 10)
    return stream.getvalue()


def test_it_masks_the_client_id_in_a_retailcrm_callback_query():
    line = entry_for(f"GET /api/retailcrm/make-call?clientId={CLIENT_ID}&code=101&userId=7&phone=+33612345678")
    assert CLIENT_ID not in line
    assert "clientId=***&code=101" in line


def test_it_masks_the_secrets_carried_in_a_path():
    assert WEBHOOK_SECRET not in entry_for(f"POST /api/telepo/webhook/{WEBHOOK_SECRET}")
    assert RECORD_TOKEN not in entry_for(f"GET /api/retailcrm/records/{RECORD_TOKEN}")
    assert "/api/telepo/webhook/***" in entry_for(f"POST /api/telepo/webhook/{WEBHOOK_SECRET}")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)  # asks pytest-django for the test database daphne uses
def test_it_keeps_credentials_out_of_a_real_daphnes_access_log(django_db_setup, django_db_blocker, processes):
    with django_db_blocker.unblock():
        env = subprocess_env()
    port = free_port()
    web = daphne_process(port, env)
    processes.append(web)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{base}/healthz"), 30, what="daphne")
    asked = [
        requests.get(f"{base}/api/retailcrm/make-call", params={"clientId": CLIENT_ID, "code": "1", "userId": "1",
                                                                "phone": "+33612345678"}, timeout=10),
        requests.post(f"{base}/api/telepo/webhook/{WEBHOOK_SECRET}", json={}, timeout=10),
        requests.get(f"{base}/api/retailcrm/records/{RECORD_TOKEN}", timeout=10),
    ]
    assert [r.status_code for r in asked] == [403, 404, 404]  # unknown clientId, secret and link: refused
    wait_for(lambda: web.log().count("/api/") >= 3, 10, what="the access log lines")
    log = web.log()
    for secret in (CLIENT_ID, WEBHOOK_SECRET, RECORD_TOKEN):
        assert secret not in log
    assert "clientId=***" in log and "/api/telepo/webhook/***" in log
