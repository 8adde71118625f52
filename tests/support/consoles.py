"""An agent's console feed over a real websocket, for end-to-end tests against a running daphne."""

from __future__ import annotations

import json
import time

import websocket
from django.conf import settings
from django.test import Client


class Console:
    """An agent's console feed, opened like the page does (session cookie, same origin); keeps every message."""

    def __init__(self, hub, agent):
        client = Client()
        client.force_login(agent.user)
        cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
        self.ws = websocket.create_connection(f"{hub.web_url.replace('http', 'ws')}/ws/console/",
                                              header=[f"Cookie: {cookie}"], origin=hub.web_url, timeout=10)
        self.messages = [json.loads(self.ws.recv())]  # the snapshot of the agent's calls
        self._requests = 0

    def _read(self, timeout: float) -> None:
        self.ws.settimeout(timeout)
        try:
            self.messages.append(json.loads(self.ws.recv()))
        except websocket.WebSocketTimeoutException:
            pass

    def wait(self, predicate, timeout: float = 15, what: str = "a message") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = next((m for m in self.messages if predicate(m)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout}s; got {self.messages}")
            self._read(0.2)

    def card(self, state: str) -> dict:
        return self.wait(lambda m: m.get("type") == "card" and m["card"]["state"] == state,
                         what=f"{state} card")["card"]

    def act(self, call_id: int, name: str) -> dict:
        self._requests += 1
        request_id = self._requests
        self.ws.send(json.dumps({"action": "call_action", "call": call_id, "name": name, "id": request_id}))
        return self.wait(lambda m: m.get("type") == "result" and m.get("id") == request_id, what=f"{name} result")

    def set_status(self, status: str) -> dict:
        """The status select's change, as console.js sends it."""
        self._requests += 1
        request_id = self._requests
        self.ws.send(json.dumps({"action": "set_status", "status": status, "id": request_id}))
        return self.wait(lambda m: m.get("type") == "result" and m.get("id") == request_id, what="set_status result")

    def cards(self, listen: float) -> list[dict]:
        deadline = time.monotonic() + listen
        while time.monotonic() < deadline:
            self._read(0.2)
        return [m["card"] for m in self.messages if m.get("type") == "card"]

    def close(self) -> None:
        self.ws.close()
