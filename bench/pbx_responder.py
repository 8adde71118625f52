"""The PBX side of benchmark 4 at little CPU: placeCall answered with the simulator's own answer.

    .venv/bin/python -m bench.pbx_responder --port 8123 --upstream http://127.0.0.1:8100

The full simulator (aiohttp, a whole call model per placeCall) cost the benchmark about as much CPU
per click as one daphne process, on the same two cores as the daphne processes measured, and its
saturation figure with two web processes was the simulator's more than ctihub's (issue 16). This
raw asyncio server sits in front of the simulator: every request goes to the simulator (login,
extension directory, session checks: the simulator answers, cookies and all) except a myRCC
``POST .../placeCall`` once one has been answered: from then on it answers each placeCall with the
status, headers and body the simulator gave the first one (the spec's 200 and the new line). The
benchmark prints that answer so its output says what the PBX side was.
``GET /_responder/stats`` answers ``{"answered": n, "forwarded": m, "place_call_answer": {...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

import requests

_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)
# Not relayed: the responder frames its own answers (Content-Length, keep-alive).
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class Responder:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.http = requests.Session()
        self.http.trust_env = False
        self.place_call_answer: bytes | None = None
        self.place_call_described: dict | None = None
        self.answered = 0
        self.forwarded = 0

    def forward(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        """The simulator's answer to the same request, as bytes to write (in a thread: blocking)."""
        sent = {name: value for name, value in headers if name.lower() not in ("host", "content-length", "connection")}
        answer = self.http.request(method, self.upstream + target, headers=sent, data=body or None,
                                   allow_redirects=False, timeout=30)
        self.forwarded += 1
        content = answer.content  # decoded: Content-Encoding is not relayed
        lines = [f"HTTP/1.1 {answer.status_code} {answer.reason}"]
        # Set-Cookie may repeat: the raw headers, not requests' folded dict.
        for name, value in answer.raw.headers.items():
            if name.lower() not in _HOP_BY_HOP:
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(content)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + content
        if method == "POST" and target.split("?")[0].endswith("/placeCall") and answer.status_code == 200:
            self.place_call_answer = raw
            self.place_call_described = {"status": answer.status_code, "content_type": answer.headers.get("Content-Type"),
                                         "body": content.decode("utf-8", "replace")}
        return raw

    def stats(self) -> bytes:
        body = json.dumps({"answered": self.answered, "forwarded": self.forwarded,
                           "place_call_answer": self.place_call_described}).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class Connection(asyncio.Protocol):
    def __init__(self, responder: Responder):
        self.responder = responder
        self.buffer = b""
        self.transport = None
        self.busy = False  # a forwarded request is in flight: answers go out in order

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.serve()

    def serve(self) -> None:
        while not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            found = _LENGTH.search(head)
            length = int(found.group(1)) if found else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            request_line, _, header_text = head.partition(b"\r\n")
            method, target, _version = request_line.decode("latin-1").split(" ", 2)
            if method == "POST" and self.responder.place_call_answer is not None \
                    and target.split("?")[0].endswith("/placeCall"):
                self.responder.answered += 1
                self.transport.write(self.responder.place_call_answer)
                continue
            if target == "/_responder/stats":
                self.transport.write(self.responder.stats())
                continue
            headers = [tuple(part.strip() for part in line.split(":", 1))
                       for line in header_text.decode("latin-1").split("\r\n") if ":" in line]
            self.busy = True
            asyncio.ensure_future(self.relay(method, target, headers, body))

    async def relay(self, method, target, headers, body) -> None:
        try:
            raw = await asyncio.to_thread(self.responder.forward, method, target, headers, body)
        except Exception as exc:  # noqa: BLE001 - the simulator unreachable: a 502, as a proxy would
            text = f"bench responder: {exc.__class__.__name__}".encode()
            raw = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
        if not self.transport.is_closing():
            self.transport.write(raw)
        self.busy = False
        self.serve()


async def serve(host: str, port: int, upstream: str) -> None:
    responder = Responder(upstream)
    server = await asyncio.get_running_loop().create_server(lambda: Connection(responder), host, port, backlog=512)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the simulator's URL")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.upstream))


if __name__ == "__main__":
    main()
