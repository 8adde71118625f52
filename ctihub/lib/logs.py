"""Structured logs: every line says which account, listener and call it is about.

Pass the ids as ``extra={"account_id": .., "listener_id": .., "call_id": ..}``.
``ContextFilter`` gives every record those three attributes (``-`` when not
given) and an ``ids`` text of the ones that are set, so the plain format shows
``[account=3 listener=7]`` and nothing on lines without ids. With
``LOG_FORMAT=json`` each line is one JSON object instead, for a log pipeline.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

ID_FIELDS = ("account_id", "listener_id", "call_id")
# URL paths whose last segment is a credential (a PBX webhook's secret, a signed recordUrl): Django
# logs the path of every 4xx/5xx ("Bad Request: /api/<pbx>/webhook/<secret>"). The apps that serve
# such paths add their prefixes (``add_secret_path``) from ``AppConfig.ready()``.
_secret_prefixes: list[str] = []
_SECRET_PATH: re.Pattern | None = None


def add_secret_path(prefix: str) -> None:
    """Mask, in every log line, the path segment that follows ``prefix`` (e.g. "/api/x/webhook/")."""
    global _SECRET_PATH
    if prefix in _secret_prefixes:
        return
    _secret_prefixes.append(prefix)
    alternatives = "|".join(re.escape(known) for known in _secret_prefixes)
    _SECRET_PATH = re.compile(rf"({alternatives})[^\s/?\"']+")


def mask_secrets(text: str) -> str:
    from ctihub.lib.http_client import mask_url

    if _SECRET_PATH is not None:
        text = _SECRET_PATH.sub(r"\1***", text)
    return mask_url(text)


class ContextFilter(logging.Filter):
    """Adds the ids (see the module doc) and masks credentials a URL in the message may carry."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: let the handler report it as logging does
            message = None
        if message is not None:
            masked = mask_secrets(message)
            if masked != message:
                record.msg, record.args = masked, ()
        parts = []
        for name in ID_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                setattr(record, name, "-")
            elif value != "-":
                parts.append(f"{name[:-3]}={value}")
        record.ids = f" [{' '.join(parts)}]" if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ID_FIELDS:
            value = getattr(record, name, "-")
            if value != "-":
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
