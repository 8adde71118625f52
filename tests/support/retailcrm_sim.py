"""Driving the simulated retailCRM through its control API (``/_sim/retailcrm``), as tests and the demo do."""

from __future__ import annotations

from tests.support.sim_control import ControlClient

API_KEY = "sim-retailcrm-key-0123456789"


class RetailCrmControl(ControlClient):
    system = "retailcrm"

    def reset(self):
        return self._call("POST", "/reset")

    def configure(self, **config):
        return self._call("PATCH", "/config", **config)

    def add_api_key(self, key: str = API_KEY):
        return self._call("POST", "/api-keys", key=key)

    def add_site(self, code, name=""):
        return self._call("POST", "/sites", code=code, name=name)

    def add_user(self, user_id, **fields):
        return self._call("POST", "/users", id=str(user_id), **fields)

    def update_user(self, user_id, **fields):
        return self._call("PATCH", f"/users/{user_id}", **fields)

    def add_customer(self, customer_id, phones, **fields):
        return self._call("POST", "/customers", id=str(customer_id), phones=phones, **fields)

    def modules(self):
        return self._call("GET", "/modules")

    def events(self):
        return [entry["event"] for entry in self._call("GET", "/events")]

    def calls(self):
        return self._call("GET", "/calls")

    def uploads(self):
        return self._call("GET", "/uploads")

    def status_changes(self):
        """The statuses set through ``POST /api/v5/users/{id}/status``, oldest first: [{userId, status}]."""
        return [{"userId": c["userId"], "status": c["status"]} for c in self._call("GET", "/status-changes")]

    def users(self):
        return {str(user["id"]): user for user in self._call("GET", "/state")["users"]}

    def requests(self, since: int = 0):
        return self._call("GET", f"/requests?since={since}")

    def stats(self):
        return self._call("GET", "/stats")

    def make_call(self, **body):
        return self._call("POST", "/make-call", **body)

    def user_status(self, **body):
        return self._call("POST", "/user-status", **body)
