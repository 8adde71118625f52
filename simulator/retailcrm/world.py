"""The simulated retailCRM: its users, customers, shops, registered modules, and what it received.

``SimulatorState.retailcrm`` is one :class:`RetailCrmWorld`. The API handlers
(``api.py``) and the control API (``control.py``) call its methods; Python
callers (tests running the simulator in a thread) may too: every method takes
the world's lock, so the server's thread and a test's thread never interleave
inside one.

What it enforces, from retailCRM's documentation and official clients:

* the API key (``X-API-KEY`` header or ``apiKey`` parameter): 403 without a known one;
* 10 requests per second per key, 40 for ``/telephony/*`` methods, counted in a
  sliding one-second window; past that, 503 (what retailCRM answers);
* a user's status (``POST /users/{id}/status``): free, busy, dinner or break, else 400; 404 for no such user;
* at most 50 calls per upload; ``duplicateCalls`` for an ``externalId`` it already has;
* errors as ``{"success": false, "errorMsg": ..., "errors": ...}``.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import threading
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

GENERAL = "general"
TELEPHONY = "telephony"
EVENT_TYPES = ("in", "out", "hangup")
HANGUP_STATUSES = ("answered", "busy", "cancel", "failed", "no answered")
UPLOAD_TYPES = ("in", "out")
UPLOAD_RESULTS = ("answered", "busy", "failed", "no answer", "not allowed", "unknown")
USER_STATUSES = ("free", "busy", "dinner", "break")
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
WINDOW = 1.0  # seconds: the rate limits are per second


class ApiError(Exception):
    """An error answer in retailCRM's shape."""

    def __init__(self, status: int, error_msg: str, errors: Any = None):
        super().__init__(f"{status} {error_msg}")
        self.status = status
        self.error_msg = error_msg
        self.errors = errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"success": False, "errorMsg": self.error_msg}
        if self.errors:
            body["errors"] = self.errors
        return body


@dataclass
class RetailCrmConfig:
    down: bool = False  # every API request answers down_status
    down_status: int = 503
    down_html: bool = False  # ...with an HTML error page (a proxy's, a maintenance page) instead of JSON
    delay: float = 0.0  # seconds added before every API answer ("slow")
    rate_limit: int = 10
    telephony_rate_limit: int = 40
    upload_limit: int = 50


def digits(phone: str) -> str:
    return re.sub(r"\D", "", phone or "")


def same_phone(a: str, b: str) -> bool:
    """retailCRM matches numbers loosely: the same digits, or the same last 10 (national forms)."""
    da, db = digits(a), digits(b)
    if not da or not db:
        return False
    return da == db or (min(len(da), len(db)) >= 10 and da[-10:] == db[-10:])


def int_if_digits(value: Any) -> Any:
    text = str(value)
    return int(text) if text.isdigit() else value


def parse_json_field(form: dict[str, str], name: str, kind: type) -> Any:
    raw = form.get(name)
    if raw is None or raw == "":
        raise ApiError(400, f"Parameter '{name}' is missing")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ApiError(400, f"Parameter '{name}' must be JSON") from None
    if not isinstance(value, kind):
        raise ApiError(400, f"Parameter '{name}' must be a JSON {'object' if kind is dict else 'array'}")
    return value


class RetailCrmWorld:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.config = RetailCrmConfig()
            self.api_keys: set[str] = set()
            self.sites: dict[str, dict[str, Any]] = {}
            self.users: dict[str, dict[str, Any]] = {}
            self.customers: dict[str, dict[str, Any]] = {}
            self.modules: dict[str, dict[str, Any]] = {}
            self.events: list[dict[str, Any]] = []
            self.calls: dict[str, dict[str, Any]] = {}
            self.uploads: list[dict[str, Any]] = []
            self.status_changes: list[dict[str, Any]] = []  # every POST /users/{id}/status retailCRM accepted
            self.requests: list[dict[str, Any]] = []
            self.outgoing: list[dict[str, Any]] = []
            self.rate_limited = 0
            self._windows: dict[tuple[str, str], collections.deque[float]] = collections.defaultdict(collections.deque)
            self._seq = itertools.count(1)

    # --- control ---------------------------------------------------------------------

    def configure(self, **changes: Any) -> RetailCrmConfig:
        names = {f.name for f in fields(RetailCrmConfig)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        with self.lock:
            for name, value in changes.items():
                setattr(self.config, name, value)
            return self.config

    def add_api_key(self, key: str) -> None:
        if not key:
            raise ValueError("an API key cannot be empty")
        with self.lock:
            self.api_keys.add(key)

    def add_site(self, code: str, name: str = "") -> dict[str, Any]:
        with self.lock:
            self.sites[code] = {"code": code, "name": name or code}
            return self.sites[code]

    def add_user(self, user_id: str, *, first_name: str = "", last_name: str = "", email: str = "",
                 status: str = "free", online: bool = True) -> dict[str, Any]:
        if status not in USER_STATUSES:
            raise ValueError(f"status must be one of {', '.join(USER_STATUSES)}")
        with self.lock:
            self.users[str(user_id)] = {
                "id": int_if_digits(user_id), "firstName": first_name, "lastName": last_name, "email": email,
                "status": status, "online": online,
            }
            return self.users[str(user_id)]

    def update_user(self, user_id: str, **changes: Any) -> dict[str, Any]:
        with self.lock:
            user = self.users[str(user_id)]  # KeyError: 404
            if "status" in changes and changes["status"] not in USER_STATUSES:
                raise ValueError(f"status must be one of {', '.join(USER_STATUSES)}")
            user.update(changes)
            return user

    def add_customer(self, customer_id: str, *, phones: list[str], first_name: str = "", last_name: str = "",
                     email: str = "", manager_id: str | None = None, site: str = "") -> dict[str, Any]:
        with self.lock:
            self.customers[str(customer_id)] = {
                "id": int_if_digits(customer_id), "firstName": first_name, "lastName": last_name, "email": email,
                "phones": [{"number": p} for p in phones], "managerId": manager_id,
                # As retailCRM's: the code of the shop (site) the customer belongs to.
                **({"site": site} if site else {}),
            }
            return self.customers[str(customer_id)]

    # --- request accounting ----------------------------------------------------------

    def log_request(self, method: str, path: str, query: dict[str, str], form: dict[str, str],
                    api_key: str | None, kind: str) -> dict[str, Any]:
        with self.lock:
            entry = {
                "seq": next(self._seq), "time": time.time(), "monotonic": time.monotonic(), "method": method,
                "path": path, "query": query, "form": form, "apiKey": api_key, "kind": kind, "status": None,
            }
            self.requests.append(entry)
            return entry

    def take_slot(self, api_key: str | None, kind: str, now: float) -> bool:
        """Count the request in its key's window; False when it is over the limit."""
        limit = self.config.telephony_rate_limit if kind == TELEPHONY else self.config.rate_limit
        with self.lock:
            window = self._windows[(api_key or "", kind)]
            while window and window[0] <= now - WINDOW:
                window.popleft()
            if len(window) >= limit:
                self.rate_limited += 1
                return False
            window.append(now)
            return True

    def stats(self) -> dict[str, Any]:
        """The most requests seen in any one-second window, per kind (over all keys' worst)."""
        with self.lock:
            by_key: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
            for entry in self.requests:
                by_key[(entry["apiKey"] or "", entry["kind"])].append(entry["monotonic"])
            worst = {GENERAL: 0, TELEPHONY: 0}
            for (_key, kind), times in by_key.items():
                times.sort()
                start = 0
                for end, moment in enumerate(times):
                    while times[start] <= moment - WINDOW:
                        start += 1
                    worst[kind] = max(worst[kind], end - start + 1)
            statuses = collections.Counter(str(e["status"]) for e in self.requests)
            return {
                "requests": len(self.requests),
                "rateLimited": self.rate_limited,
                "maxPerSecond": worst,
                "limits": {GENERAL: self.config.rate_limit, TELEPHONY: self.config.telephony_rate_limit},
                "statuses": dict(statuses),
            }

    # --- the API -------------------------------------------------------------------------

    def edit_module(self, code: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        module = parse_json_field(form, "integrationModule", dict)
        errors: dict[str, str] = {}
        if module.get("code") != code:
            errors["code"] = f"The code in the body ({module.get('code')!r}) differs from the URL's ({code!r})"
        if not module.get("name"):
            errors["name"] = "This value should not be blank."
        integrations = module.get("integrations") or {}
        if not isinstance(integrations, dict):
            errors["integrations"] = "This value should be an object."
            integrations = {}
        telephony = integrations.get("telephony")
        if telephony is not None:
            errors.update(self._telephony_errors(telephony))
        if errors:
            raise ApiError(400, "Errors in the entity format", errors)
        info: dict[str, list] = {}
        with self.lock:
            created = code not in self.modules
            self.modules[code] = module
            if telephony is not None:
                info["notExistUsersIds"] = [
                    int_if_digits(c["userId"]) for c in telephony.get("additionalCodes") or []
                    if str(c["userId"]) not in self.users
                ]
                info["notExistSiteCodes"] = [
                    p["siteCode"] for p in telephony.get("externalPhones") or [] if p["siteCode"] not in self.sites
                ]
        return (201 if created else 200), {"success": True, "info": info}

    @staticmethod
    def _telephony_errors(telephony: Any) -> dict[str, str]:
        prefix = "integrations[telephony]"
        if not isinstance(telephony, dict):
            return {prefix: "This value should be an object."}
        errors = {}
        if not telephony.get("clientId"):
            errors[f"{prefix}[clientId]"] = "This value should not be blank."
        for name in ("makeCallUrl", "changeUserStatusUrl"):
            url = telephony.get(name)
            if url is not None and not re.match(r"^https?://[^/\s]+", str(url)):
                errors[f"{prefix}[{name}]"] = "This value is not a valid URL."
        for index, item in enumerate(telephony.get("additionalCodes") or []):
            if not isinstance(item, dict) or not item.get("userId") or not item.get("code"):
                errors[f"{prefix}[additionalCodes][{index}]"] = "userId and code are required."
        for index, item in enumerate(telephony.get("externalPhones") or []):
            if not isinstance(item, dict) or not item.get("siteCode") or not item.get("externalPhone"):
                errors[f"{prefix}[externalPhones][{index}]"] = "siteCode and externalPhone are required."
        return errors

    def telephony_module(self, code: str | None = None) -> dict[str, Any]:
        """The active module with telephony (the given one, or the only/last one registered)."""
        with self.lock:
            candidates = [
                m for c, m in self.modules.items()
                if (code is None or c == code) and m.get("active") and (m.get("integrations") or {}).get("telephony")
            ]
        if not candidates:
            raise KeyError("no active telephony integration module is registered")
        return candidates[-1]

    def codes_by_user(self) -> dict[str, str]:
        try:
            telephony = self.telephony_module()["integrations"]["telephony"]
        except KeyError:
            return {}
        return {str(c["userId"]): str(c["code"]) for c in telephony.get("additionalCodes") or []}

    def call_event(self, form: dict[str, str]) -> dict[str, Any]:
        event = parse_json_field(form, "event", dict)
        errors = {}
        if not event.get("phone"):
            errors["phone"] = "This value should not be blank."
        if event.get("type") not in EVENT_TYPES:
            errors["type"] = f"The value must be one of {', '.join(EVENT_TYPES)}."
        if "hangupStatus" in event and event["hangupStatus"] not in HANGUP_STATUSES:
            errors["hangupStatus"] = f"The value must be one of {', '.join(HANGUP_STATUSES)}."
        if not isinstance(event.get("codes", []), list) or not all(isinstance(c, str) for c in event.get("codes", [])):
            errors["codes"] = "This value should be an array of strings."
        if not isinstance(event.get("userIds", []), list) or not all(
            isinstance(u, int) for u in event.get("userIds", [])
        ):
            errors["userIds"] = "This value should be an array of integers."
        if errors:
            raise ApiError(400, "Errors in the entity format", errors)
        try:
            self.telephony_module()
        except KeyError:
            raise ApiError(400, "Telephony integration not found or not active") from None
        with self.lock:
            self.events.append({"seq": len(self.events) + 1, "time": time.time(), "event": event})
        return {"success": True}

    def upload(self, form: dict[str, str]) -> dict[str, Any]:
        calls = parse_json_field(form, "calls", list)
        if len(calls) > self.config.upload_limit:
            raise ApiError(400, "Errors in the input parameters",
                           {"calls": f"No more than {self.config.upload_limit} calls per request"})
        errors = {}
        for index, call in enumerate(calls):
            errors.update(self._upload_errors(index, call))
        if errors:
            raise ApiError(400, "Calls are not loaded", errors)
        processed, duplicates = 0, []
        with self.lock:
            for call in calls:
                external_id = call.get("externalId")
                if external_id and str(external_id) in self.calls:
                    duplicates.append(external_id)
                    continue
                key = str(external_id) if external_id else f"no-external-id-{len(self.calls) + 1}"
                self.calls[key] = call
                processed += 1
            self.uploads.append({"time": time.time(), "calls": calls, "processed": processed, "duplicates": duplicates})
        return {"success": True, "processedCallsCount": processed, "duplicateCalls": duplicates}

    @staticmethod
    def _upload_errors(index: int, call: Any) -> dict[str, str]:
        prefix = f"calls[{index}]"
        if not isinstance(call, dict):
            return {prefix: "This value should be an object."}
        errors = {}
        try:
            datetime.strptime(str(call.get("date")), DATE_FORMAT)
        except ValueError:
            errors[f"{prefix}[date]"] = "This value is not a valid datetime (Y-m-d H:i:s)."
        if call.get("type") not in UPLOAD_TYPES:
            errors[f"{prefix}[type]"] = f"The value must be one of {', '.join(UPLOAD_TYPES)}."
        if not call.get("phone"):
            errors[f"{prefix}[phone]"] = "This value should not be blank."
        if "result" in call and call["result"] not in UPLOAD_RESULTS:
            errors[f"{prefix}[result]"] = f"The value must be one of {', '.join(UPLOAD_RESULTS)}."
        for name in ("duration", "durationWaiting"):
            if name in call and (not isinstance(call[name], int) or call[name] < 0):
                errors[f"{prefix}[{name}]"] = "This value should be a positive integer."
        if "userId" in call and not isinstance(call["userId"], int):
            errors[f"{prefix}[userId]"] = "This value should be an integer."
        return errors

    def manager(self, query: dict[str, str], origin: str) -> dict[str, Any]:
        phone = query.get("phone")
        if not phone:
            raise ApiError(400, "Parameter 'phone' is missing")
        details = str(query.get("details", "true")).lower() in ("1", "true")
        ignore_status = str(query.get("ignoreStatus", "false")).lower() in ("1", "true")
        answer: dict[str, Any] = {"success": True}
        links = {"newOrderLink": f"{origin}/orders/add?phone={digits(phone)}"}
        with self.lock:
            customer = next(
                (c for c in self.customers.values() if any(same_phone(p["number"], phone) for p in c["phones"])), None
            )
            if customer is None:
                links["newCustomerLink"] = f"{origin}/customers/add?phone={digits(phone)}"
                answer["links"] = links
                return answer
            answer["customer"] = (
                {k: v for k, v in customer.items() if k != "managerId"} if details else {"id": customer["id"]}
            )
            links["customerLink"] = f"{origin}/customers/{customer['id']}"
            answer["links"] = links
            manager = self.users.get(str(customer["managerId"])) if customer["managerId"] else None
            code = self.codes_by_user().get(str(customer["managerId"]))
            # The doc: a manager is returned only if logged in, free, and with a code in the integration.
            if manager and (ignore_status or (manager["online"] and manager["status"] == "free" and code)):
                view = {k: v for k, v in manager.items() if k not in ("status", "online")}
                answer["manager"] = {**view, "code": code} if details else {"id": manager["id"], "code": code}
        return answer

    def set_user_status(self, user_id: str, form: dict[str, str]) -> dict[str, Any]:
        """``POST /api/v5/users/{id}/status``: the form's ``status`` (a plain value) becomes the user's."""
        status = form.get("status")
        if not status:
            raise ApiError(400, "Errors in the input parameters", {"status": "This value should not be blank."})
        if status not in USER_STATUSES:
            raise ApiError(400, "Errors in the input parameters",
                           {"status": f"The value must be one of {', '.join(USER_STATUSES)}."})
        with self.lock:
            user = self.users.get(str(user_id))
            if user is None:
                raise ApiError(404, "Not found")
            user["status"] = status
            self.status_changes.append({"seq": len(self.status_changes) + 1, "time": time.time(),
                                        "userId": user["id"], "status": status})
        return {"success": True}

    # --- views ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "config": asdict(self.config), "apiKeys": len(self.api_keys), "sites": list(self.sites.values()),
                "users": list(self.users.values()), "customers": list(self.customers.values()),
                "modules": dict(self.modules), "events": len(self.events), "calls": len(self.calls),
                "uploads": len(self.uploads), "statusChanges": len(self.status_changes),
                "rateLimited": self.rate_limited,
            }

    def requests_since(self, seq: int = 0) -> list[dict[str, Any]]:
        with self.lock:
            return [{k: v for k, v in e.items() if k != "monotonic"} for e in self.requests if e["seq"] > seq]

    def record_outgoing(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.outgoing.append(entry)
