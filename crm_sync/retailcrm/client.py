"""The one retailCRM API client: every request ctihub sends to retailCRM goes through here.

Why not the official ``retailcrm`` package: it has no timeouts and keeps the
request's parameters on the client object between calls (not thread-safe), and
our Celery workers run threads. So this module owns the layer, on
``ctihub.lib.http_client.HttpClient`` (timeouts, redirects, masked logs), and
encodes exactly as the official clients do:

* the API key in the ``X-API-KEY`` header;
* POST bodies form-encoded (``application/x-www-form-urlencoded``), each entity
  in ONE field whose value is the entity as a JSON string (``integrationModule=``,
  ``event=``, ``calls=``), made by ``json.dumps`` with its default settings, the
  way the official Python client builds it;
* GET parameters in the query string.

Every request first takes a token from the Redis bucket of its API key (see
``ratelimit``), so all workers together stay under retailCRM's limits; call events
and the manager lookup take theirs before uploads (which only fill the history)
when both wait. A 503 or
429 ("slow down") is retried a few times with backoff (honouring
``Retry-After``); after that, and for anything else that is not a success, the
answer becomes an exception that quotes what retailCRM said
(``{"success": false, "errorMsg": ..., "errors": ...}``). An answer that is not
JSON did not come from retailCRM's API (a proxy's error page, a maintenance
page): whatever its status it is "unavailable", to be retried, never a refusal.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any
from urllib.parse import quote

import redis
import requests
from urllib3.exceptions import NewConnectionError

from crm_sync.retailcrm.ratelimit import HIGH, LOW, RateLimiter, RateLimitTimeout, bucket_class
from ctihub.lib.http_client import HttpClient, HttpError

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v5"
MAX_CALLS_PER_UPLOAD = 50  # retailCRM's limit for /telephony/calls/upload
SLOW_DOWN_STATUSES = (429, 503)


class RetailCrmError(Exception):
    """retailCRM refused or failed a request; the message says what retailCRM said.

    ``retryable`` is True when trying again later can work (retailCRM down or
    asking us to slow down, no answer at all); False when the request itself is
    wrong or not allowed, and sending it again would get the same answer.
    """

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, error_msg: str = "", errors: Any = None):
        super().__init__(message)
        self.status = status
        self.error_msg = error_msg
        self.errors = errors


class RetailCrmUnavailable(RetailCrmError):
    """No usable answer now (503/429/5xx, timeout, limit saturated): retry later.

    ``maybe_delivered`` is True when the request left but no answer came back
    (read timeout, connection reset): retailCRM may have acted on it.
    """

    retryable = True

    def __init__(self, message: str, *, maybe_delivered: bool = False, **kwargs):
        super().__init__(message, **kwargs)
        self.maybe_delivered = maybe_delivered


class RetailCrmAuthError(RetailCrmError):
    """The API key is missing, wrong, or lacks access to this method (401/403)."""


class RetailCrmNotFound(RetailCrmError):
    """retailCRM has no such entity (404)."""


def encode_form(field: str, entity: Any) -> dict[str, str]:
    """One form field whose value is the entity's JSON, as the official client sends it."""
    return {field: json.dumps(entity)}


def _describe_errors(errors: Any) -> str:
    if not errors:
        return ""
    if isinstance(errors, dict):
        return "; ".join(f"{key}: {value}" for key, value in errors.items())
    if isinstance(errors, list):
        return "; ".join(str(item) for item in errors)
    return str(errors)


def error_from_answer(status: int, body: Any, method: str, path: str) -> RetailCrmError:
    error_msg, errors = "", None
    if isinstance(body, dict):
        error_msg = str(body.get("errorMsg") or "")
        errors = body.get("errors")
    said = error_msg or (f"HTTP {status} without an errorMsg" if body is not None
                         else f"HTTP {status}, not JSON (an error page from something in front of retailCRM?)")
    details = _describe_errors(errors)
    message = f"retailCRM refused {method} {path} ({status}): {said}" + (f" [{details}]" if details else "")
    if body is None or status in SLOW_DOWN_STATUSES or status >= 500:
        # retailCRM's API answers JSON, even to say no: anything else (a proxy's or a maintenance page,
        # even with a 200 or a 403) says nothing about the request, which must not be dropped for it.
        cls = RetailCrmUnavailable
    elif status in (401, 403):
        cls = RetailCrmAuthError
    elif status == 404:
        cls = RetailCrmNotFound
    else:
        cls = RetailCrmError
    return cls(message, status=status, error_msg=error_msg, errors=errors)


_local = threading.local()


def _thread_http() -> HttpClient:
    # A requests.Session is not safe to share across threads (cookies, adapters'
    # state); Celery's thread pool gets one client per thread, reused per request.
    http = getattr(_local, "http", None)
    if http is None:
        http = _local.http = HttpClient("retailcrm")
    return http


class RetailCrmClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        http: HttpClient | None = None,
        limiter: RateLimiter | None = None,
        slow_down_retries: int = 2,
        backoff_base: float = 0.25,
        max_backoff: float = 5.0,
        max_rate_wait: float = 30.0,
    ):
        if not api_key:
            raise RetailCrmAuthError("no retailCRM API key is set for this integration")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._http = http
        self.limiter = limiter or RateLimiter()
        self.slow_down_retries = slow_down_retries
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self.max_rate_wait = max_rate_wait

    @classmethod
    def for_integration(cls, integration, **kwargs) -> RetailCrmClient:
        return cls(integration.crm_url, integration.api_key, **kwargs)

    @property
    def http(self) -> HttpClient:
        return self._http or _thread_http()

    # --- the methods ctihub uses -----------------------------------------------------

    def edit_module(self, code: str, module: dict) -> dict:
        """Create or update the integration module (``POST /integration-modules/{code}/edit``)."""
        return self._request("POST", f"/integration-modules/{code}/edit", form=encode_form("integrationModule", module))

    def get_module(self, code: str) -> dict:
        return self._request("GET", f"/integration-modules/{code}")

    def call_event(self, event: dict) -> dict:
        """Tell retailCRM a call started (in/out: the pop-up) or ended (hangup)."""
        return self._request("POST", "/telephony/call/event", form=encode_form("event", event))

    def upload_calls(self, calls: list[dict]) -> dict:
        """Add calls to retailCRM's history; answers ``processedCallsCount`` and ``duplicateCalls``."""
        if not calls:
            raise ValueError("nothing to upload")
        if len(calls) > MAX_CALLS_PER_UPLOAD:
            raise ValueError(f"retailCRM takes at most {MAX_CALLS_PER_UPLOAD} calls per upload, not {len(calls)}")
        return self._request("POST", "/telephony/calls/upload", form=encode_form("calls", calls), priority=LOW)

    def responsible_manager(self, phone: str) -> dict:
        """The customer with this number, their manager (only if free and with a code) and links."""
        return self._request("GET", "/telephony/manager", params={"phone": phone, "details": "true"})

    def sites(self) -> dict:
        """The shops (``GET /reference/sites``): ``sites``, {code: {"code", "name", ...}}."""
        return self._request("GET", "/reference/sites")

    def user_status(self, user_id: str, status: str) -> dict:
        """Set a manager's status (``POST /users/{id}/status``, form field ``status``: free, busy, dinner,
        break), as the official clients' ``user_status``/``usersStatus`` send it: a plain value, not JSON.

        Its token comes from the general bucket (not under ``/telephony/``), apart from the call events':
        however many statuses change, no call event waits for one. ``HIGH`` there, because ``LOW`` can never
        be served in that bucket: its capacity is one token (``BURST_SHARE`` of 10) and a low request
        wants one more than it takes (``LOW_RESERVE``); its only other users are the rare registrations.
        """
        return self._request("POST", f"/users/{quote(str(user_id), safe='')}/status", form={"status": status},
                             priority=HIGH)

    # --- transport ----------------------------------------------------------------------

    def _request(self, method: str, path: str, *, params: dict | None = None, form: dict | None = None,
                 priority: str = HIGH) -> dict:
        try:
            return self._send(method, path, params=params, form=form, priority=priority)
        except RetailCrmError as exc:
            from ctihub.lib import metrics

            metrics.crm_error(_error_kind(exc))
            raise

    def _send(self, method: str, path: str, *, params: dict | None = None, form: dict | None = None,
              priority: str = HIGH) -> dict:
        url = f"{self.base_url}{API_PREFIX}{path}"
        kind = bucket_class(API_PREFIX + path)
        attempt = 0
        while True:
            try:
                self.limiter.acquire(self.api_key, kind, self.max_rate_wait, priority)
            except RateLimitTimeout as exc:
                raise RetailCrmUnavailable(str(exc)) from exc
            except redis.RedisError as exc:
                # Nothing left: the budget all workers share lives in Redis (restarting, say). Unavailable,
                # never "maybe delivered": an event marked in flight here was taken as sent and lost.
                raise RetailCrmUnavailable(
                    f"retailCRM's shared rate limit cannot be read ({exc.__class__.__name__}); nothing was sent"
                ) from exc
            try:
                response = self.http.request(
                    method, url, params=params, data=form, headers={"X-API-KEY": self.api_key, "Accept": "application/json"}
                )
            except HttpError as exc:
                raise RetailCrmUnavailable(
                    f"retailCRM did not answer {method} {path}: {exc}", maybe_delivered=not _surely_not_sent(exc.__cause__)
                ) from exc
            body = _json_or_none(response)
            if response.status_code in SLOW_DOWN_STATUSES and attempt < self.slow_down_retries:
                attempt += 1
                delay = self._backoff(attempt, response.headers.get("Retry-After"))
                logger.info("retailCRM answered %s to %s %s; retry %s in %.2f s",
                            response.status_code, method, path, attempt, delay)
                time.sleep(delay)
                continue
            if 200 <= response.status_code < 300 and isinstance(body, dict) and body.get("success") is not False:
                return body
            raise error_from_answer(response.status_code, body, method, path)

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        delay = min(self.max_backoff, self.backoff_base * 2 ** (attempt - 1))
        return delay * random.uniform(0.8, 1.2)  # jitter: workers that failed together do not retry together


def _error_kind(exc: RetailCrmError) -> str:
    """The ``kind`` label of the CRM errors metric: auth, not_found, unavailable, no_answer, refused."""
    if isinstance(exc, RetailCrmAuthError):
        return "auth"
    if isinstance(exc, RetailCrmNotFound):
        return "not_found"
    if isinstance(exc, RetailCrmUnavailable):
        return "unavailable" if exc.status else "no_answer"
    return "refused"


def _surely_not_sent(exc: BaseException | None) -> bool:
    """True only when the connection was never made, so retailCRM cannot have seen the request."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        inner = exc.args[0] if exc.args else None
        reason = getattr(inner, "reason", inner)
        return isinstance(reason, NewConnectionError)
    return False


def _json_or_none(response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
