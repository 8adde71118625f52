"""A small Istra client for the simulator tests, written from the vendor docs.

It does what a real client does and nothing more: Basic-auth Login with
``X-Application: <app>``, then the cookie plus ``X-Application: <app>;<token>`` on
every request, picking up a new token from any response that carries one, and a
websocket opened with the session cookie only.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import requests
import websocket


class IstraClient:
    def __init__(self, base_url: str, app: str):
        self.base = base_url.rstrip("/") + "/"  # http://HOST/restletrouter/
        self.app = app
        self.http = requests.Session()
        self.token: str | None = None

    # --- HTTP --------------------------------------------------------------------------

    def login(self, username: str, password: str) -> requests.Response:
        response = self.http.post(
            self.base + "v1/service/Login",
            headers={"X-Application": self.app, "Content-Type": "application/json", "Accept": "application/json"},
            auth=(username, password),
        )
        self._pick_token(response)
        return response

    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-Application": f"{self.app};{self.token}",
        }

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
        response = self.http.request(method, self.base + path, headers={**self.headers(), **(headers or {})}, **kwargs)
        self._pick_token(response)
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def _pick_token(self, response: requests.Response) -> None:
        # myIstra: "one should expect to detect and parse the token value in each response".
        app, _, token = response.headers.get("X-Application", "").partition(";")
        if app == self.app and token:
            self.token = token

    @property
    def session_id(self) -> str:
        return self.http.cookies[f"{self.app}_SESSIONID"]

    # --- websocket ---------------------------------------------------------------------

    def open_socket(self, timeout: float = 3.0) -> EventSocket:
        url = self.base.replace("http://", "ws://", 1) + f"ws-service/{self.app}"
        ws = websocket.create_connection(url, cookie=f"{self.app}_SESSIONID={self.session_id}", timeout=timeout)
        return EventSocket(ws)


class SocketClosed(Exception):
    """The server closed the websocket: ``code`` from its close frame, None when cut abruptly."""

    def __init__(self, code: int | None):
        super().__init__(f"websocket closed ({'abruptly' if code is None else code})")
        self.code = code


class EventSocket:
    def __init__(self, ws: websocket.WebSocket):
        self.ws = ws
        self._unread: list[dict[str, Any]] = []  # text frames that arrived while waiting for a pong

    def next_frame(self, timeout: float = 3.0) -> dict[str, Any]:
        if self._unread:
            return self._unread.pop(0)
        self.ws.settimeout(timeout)
        while True:
            try:
                opcode, frame = self.ws.recv_data_frame(True)
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                raise SocketClosed(None) from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise SocketClosed(struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                return json.loads(frame.data.decode("utf-8"))

    def ping(self, timeout: float = 1.0) -> bool:
        """Send a websocket ping: True when its pong comes back within ``timeout``."""
        payload = str(time.monotonic_ns()).encode()
        try:
            self.ws.ping(payload)
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            raise SocketClosed(None) from None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(left)
            try:
                opcode, frame = self.ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                return False
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                raise SocketClosed(None) from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise SocketClosed(struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005)
            if opcode == websocket.ABNF.OPCODE_PONG and frame.data == payload:
                return True
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self._unread.append(json.loads(frame.data.decode("utf-8")))
        return False

    def send_text(self, text: str) -> None:
        self.ws.send(text)

    def next_item(self, timeout: float = 3.0) -> dict[str, Any]:
        frame = self.next_frame(timeout)
        assert len(frame["item"]) == 1, frame
        return frame["item"][0]

    def frames_during(self, seconds: float) -> list[tuple[float, dict[str, Any]]]:
        """Every frame received in the next ``seconds``, with its arrival time."""
        frames = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = self.next_frame(timeout=left)
            except websocket.WebSocketTimeoutException:
                break
            frames.append((time.monotonic(), frame))
        return frames

    def assert_silent(self, seconds: float = 0.3) -> None:
        frames = self.frames_during(seconds)
        assert frames == [], frames

    def close(self) -> None:
        self.ws.close()
