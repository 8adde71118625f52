"""Structured log lines carry account, listener and call ids; production settings are hardened."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from ctihub.lib.logs import ContextFilter, JsonFormatter

REPO = Path(__file__).resolve().parents[2]


def record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord("telephony.sockets.supervisor", logging.WARNING, __file__, 1, "frame rejected: %s", ("bad",), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    ContextFilter().filter(rec)
    return rec


def test_it_puts_the_ids_in_plain_lines_and_nothing_when_there_are_none():
    formatter = logging.Formatter("%(levelname)s %(name)s%(ids)s %(message)s")
    assert formatter.format(record(account_id=3, listener_id=7)) == (
        "WARNING telephony.sockets.supervisor [account=3 listener=7] frame rejected: bad")
    assert formatter.format(record()) == "WARNING telephony.sockets.supervisor frame rejected: bad"


def test_it_writes_one_json_object_per_line_with_the_ids():
    line = json.loads(JsonFormatter().format(record(account_id=3, listener_id=7, call_id=42)))
    assert line["message"] == "frame rejected: bad"
    assert (line["account_id"], line["listener_id"], line["call_id"]) == (3, 7, 42)
    assert line["level"] == "WARNING" and line["logger"] == "telephony.sockets.supervisor"
    assert "call_id" not in json.loads(JsonFormatter().format(record(account_id=3)))


def test_it_masks_credentials_that_a_logged_url_carries():
    rec = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "%s: %s",
                            ("Bad Request", "/api/telepo/webhook/s3cret-hook"), None)
    ContextFilter().filter(rec)
    assert rec.getMessage() == "Bad Request: /api/telepo/webhook/***"
    rec = record()
    rec.msg, rec.args = "GET /api/retailcrm/make-call?clientId=abc123&code=1 and /api/retailcrm/records/1:sig", ()
    ContextFilter().filter(rec)
    assert "abc123" not in rec.getMessage() and "1:sig" not in rec.getMessage()


def production_settings(**env) -> dict:
    """The settings a process gets with DEBUG=false (in a child: settings are read once per process)."""
    code = (
        "import json, django; from django.conf import settings as s; django.setup();"
        "print(json.dumps({k: getattr(s, k) for k in ('SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE',"
        "'SESSION_COOKIE_HTTPONLY', 'SECURE_HSTS_SECONDS', 'SECURE_PROXY_SSL_HEADER', 'MIDDLEWARE',"
        "'X_FRAME_OPTIONS', 'SECURE_CONTENT_TYPE_NOSNIFF', 'DEBUG', 'LOGGING')}))"
    )
    child_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "ctihub.settings", "DEBUG": "false",
                 "SECRET_KEY": "x" * 50, "FIELD_ENCRYPTION_KEY": "Xm2pG1bJ1c5E9Ezn0U6l1ZQ3w3V8n5b2t9h0y8k4r6E=",
                 "ALLOWED_HOSTS": "ctihub.example.com", **env}
    child_env.pop("SECURE_COOKIES", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_it_hardens_cookies_csrf_and_tls_in_production_settings():
    s = production_settings()
    assert s["DEBUG"] is False
    assert s["SESSION_COOKIE_SECURE"] is True and s["CSRF_COOKIE_SECURE"] is True
    assert s["SESSION_COOKIE_HTTPONLY"] is True
    assert s["SECURE_HSTS_SECONDS"] >= 31536000
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert "django.middleware.csrf.CsrfViewMiddleware" in s["MIDDLEWARE"]
    assert "django.middleware.security.SecurityMiddleware" in s["MIDDLEWARE"]
    assert s["X_FRAME_OPTIONS"] == "DENY" and s["SECURE_CONTENT_TYPE_NOSNIFF"] is True


def test_it_switches_to_json_log_lines_with_log_format_json():
    s = production_settings(LOG_FORMAT="json")
    handler = s["LOGGING"]["handlers"]["console"]
    assert handler["formatter"] == "json" and handler["filters"] == ["ids"]
