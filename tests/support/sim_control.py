"""Driving a simulator process through its control API, as the demo and the e2e tests do."""

from __future__ import annotations

import requests


class ControlClient:
    """One simulated system's control API, ``/_sim/<system>``: JSON in, JSON out, a failure is a test failure."""

    system = ""

    def __init__(self, sim_url: str):
        self.url = sim_url
        self.base = f"{sim_url}/_sim/{self.system}"

    def _call(self, method: str, route: str, expect_ok: bool = True, **body):
        response = requests.request(method, f"{self.base}{route}", json=body or None, timeout=20)
        if expect_ok:
            assert response.status_code < 400, f"{method} {route}: {response.status_code} {response.text}"
        return response.json()


class IstraControl(ControlClient):
    system = "istra"

    def add_user(self, login, password, **fields):
        return self._call("POST", "/users", login=login, password=password, **fields)

    def add_extension(self, ext_id, number, **fields):
        return self._call("POST", "/extensions", id=ext_id, number=number, **fields)

    def incoming(self, terminal_id, caller, **fields):
        return self._call("POST", "/calls/incoming", terminalId=terminal_id, **{"from": caller}, **fields)

    def outgoing(self, terminal_id, to, **fields):
        return self._call("POST", "/calls/outgoing", terminalId=terminal_id, to=to, **fields)

    def move(self, call_id, move, **body):
        return self._call("POST", f"/calls/{call_id}/{move}", **body)

    def calls(self):
        return self._call("GET", "/calls")

    def script(self, moves: list[dict], expect_ok: bool = True):
        """Call moves the platform plays at their Unix times (``simulator/istra/script.py``)."""
        return self._call("POST", "/calls/script", expect_ok=expect_ok, moves=moves)

    def script_status(self):
        return self._call("GET", "/calls/script")

    def fail_next(self, count=1, status=503, **match):
        """The next ``count`` requests (of ``app``, with ``path`` in their path) answer ``status``."""
        return self._call("POST", "/faults/fail-next", count=count, status=status, **match)

    def call(self, call_id):
        return self._call("GET", f"/calls/{call_id}")

    def sessions(self):
        return self._call("GET", "/sessions")

    def drop_websockets(self):
        return self._call("POST", "/websockets/drop")

    def expire_sessions(self, app=None, close_sockets=None):
        """Expire the sessions of ``app`` (all when None); ``close_sockets`` None: the simulator's
        ``expiryClosesSockets`` setting decides whether their websockets close or stay open."""
        body = {"app": app, "closeSockets": close_sockets}
        return self._call("POST", "/sessions/expire", **{k: v for k, v in body.items() if v is not None})

    def bean_scope(self, scope: str):
        """Listener beans scoped per ``session`` (the default) or shared by the ``user``'s sessions."""
        return self._call("POST", "/faults/bean-scope", scope=scope)

    def variance(self):
        return self._call("GET", "/faults/variance")

    def requests(self, since: int = 0):
        return self._call("GET", f"/requests?since={since}")
