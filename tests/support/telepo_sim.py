"""Driving the simulated Telepo through its control API (``/_sim/telepo``), as tests and the demo do."""

from __future__ import annotations

import requests

from tests.support.processes import wait_for
from tests.support.sim_control import ControlClient

TICKET = "19654.VDo1ZDYwNTdmNzNjY2I5Mjdl"
DOMAIN = "organization.org"


class TelepoControl(ControlClient):
    system = "telepo"

    def reset(self):
        return self._call("POST", "/reset")

    def add_ticket(self, ticket: str = TICKET, domain: str = DOMAIN, **fields):
        return self._call("POST", "/tickets", ticket=ticket, domain=domain, **fields)

    def add_user(self, user_id: str, domain: str = DOMAIN, **fields):
        return self._call("POST", "/users", userId=user_id, domain=domain, **fields)

    def set_webhook_url(self, url: str, domain: str = DOMAIN):
        return self._call("PUT", "/webhook-url", domain=domain, url=url)

    def incoming(self, user_id: str, caller: str, **fields):
        return self._call("POST", "/calls/incoming", userId=user_id, **{"from": caller}, **fields)

    def outgoing(self, user_id: str, to: str, **fields):
        return self._call("POST", "/calls/outgoing", userId=user_id, to=to, **fields)

    def call(self, call_id: str):
        return self._call("GET", f"/calls/{call_id}")

    def answer(self, call_id: str, **fields):
        return self._call("POST", f"/calls/{call_id}/answer", **fields)

    def hangup(self, call_id: str, **fields):
        return self._call("POST", f"/calls/{call_id}/hangup", **fields)

    def decline(self, call_id: str, device_id: str):
        return self._call("POST", f"/calls/{call_id}/decline", deviceId=device_id)

    def divert(self, call_id: str, device_id: str):
        return self._call("POST", f"/calls/{call_id}/divert", deviceId=device_id)

    def set_status_name(self, call_id: str, name: str | None):
        return self._call("PUT", f"/calls/{call_id}/status-name", name=name)

    def rename_next(self, to, count: int = 1, state: str | None = None, field: str | None = None):
        return self._call("POST", "/webhooks/rename-next", to=to, count=count,
                          **({"state": state} if state else {}), **({"field": field} if field else {}))

    def fail_next(self, action: str | None = None, description: str | None = None, count: int = 1):
        return self._call("POST", "/actions/fail-next", count=count, **({"action": action} if action else {}),
                          **({"description": description} if description else {}))

    def hold_webhooks(self):
        return self._call("POST", "/webhooks/hold")

    def api(self, method: str, path: str, body=None, ticket: str | None = TICKET) -> requests.Response:
        """A request to the simulated Telepo's own API (not the control API), with the bearer ticket if given."""
        headers = {"Authorization": f"Bearer {ticket}"} if ticket else {}
        return requests.request(method, f"{self.url}{path}", json=body, headers=headers, timeout=10)

    def act(self, user_id: str, action: str, call_id: str, body: dict | None = None,
            domain: str = DOMAIN) -> requests.Response:
        """A call-control action of the spec (``/api/call/control/v1/<action>/{domain}/{userId}/{callId}``)."""
        return self.api("POST", f"/api/call/control/v1/{action}/{domain}/{user_id}/{call_id}", body or {})

    def mismatch_status(self, status: int):
        """The 4xx a stale stateToken gets from now on (409 by default)."""
        return self._call("POST", "/actions/mismatch-status", status=status)

    def stamp_style(self, style: str):
        """How the messages delivered from now on write their timestamp (the simulator's STAMP_STYLES)."""
        return self._call("POST", "/webhooks/stamp-style", style=style)

    def release_webhooks(self, order: str = "fifo", seed: int | None = None):
        return self._call("POST", "/webhooks/release", order=order, **({"seed": seed} if seed is not None else {}))

    def drop_next(self, count: int = 1, state: str | None = None):
        return self._call("POST", "/webhooks/drop-next", count=count, **({"state": state} if state else {}))

    def duplicate_next(self, count: int = 1, state: str | None = None):
        return self._call("POST", "/webhooks/duplicate-next", count=count, **({"state": state} if state else {}))

    def resend(self, call_id: str, seq_num: int):
        return self._call("POST", "/webhooks/resend", callId=call_id, seqNum=seq_num)

    def messages(self):
        return self._call("GET", "/webhooks")

    def deliveries(self):
        return self._call("GET", "/webhooks/deliveries")

    def requests(self, since: int = 0):
        return self._call("GET", f"/requests?since={since}")

    def wait_delivered(self, count: int, timeout: float = 10):
        """Until ``count`` webhook deliveries were attempted (answered, failed or dropped)."""
        return wait_for(lambda: (d := self.deliveries()) and len(d) >= count and d, timeout,
                        what=f"{count} Telepo webhook deliveries")


class WebhookReceiver:
    """A stand-in for ctihub's webhook endpoint: records every POST and answers ``status``."""

    def __init__(self, status: int = 200):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self
        self.status = status
        self.received: list[dict] = []
        self.paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.paths.append(self.path)
                receiver.received.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/telepo/webhook/s3cret"
        # serve_forever looks for shutdown() every poll_interval (0.5 s by default): each test using a receiver
        # waited that long to close it, a minute over the suite.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 10) -> list[dict]:
        wait_for(lambda: len(self.received) >= count, timeout, what=f"{count} webhooks received")
        return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
