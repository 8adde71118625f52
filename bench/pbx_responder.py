"""The PBX side of benchmark 4 at little CPU: placeCall answered with the simulator's own answer.

    .venv/bin/python -m bench.pbx_responder --port 8123 --upstream http://127.0.0.1:8100

The full simulator (aiohttp, a whole call model per placeCall) cost the benchmark about as much CPU
per click as one daphne process, on the same two cores as the daphne processes measured, and its
saturation figure with two web processes was the simulator's more than ctihub's (issue 16). This
small ``epoll`` server sits in front of the simulator: every request goes to the simulator (login,
extension directory, session checks: the simulator answers, cookies and all) except a myRCC
``POST .../placeCall`` once one has been answered: from then on it answers each placeCall with the
status, headers and body the simulator gave the first one (the spec's 200 and the new line). The
benchmark prints that answer so its output says what the PBX side was.
``GET /_responder/stats`` answers ``{"answered": n, "forwarded": m, "place_call_answer": {...}}``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import queue
import re
import select
import socket

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
                                         "body": content.decode("utf-8", "replace"),
                                         "headers": [[name, value] for name, value in answer.raw.headers.items()
                                                     if name.lower() not in _HOP_BY_HOP]}
        return raw

    def stats(self) -> bytes:
        body = json.dumps({"answered": self.answered, "forwarded": self.forwarded,
                           "place_call_answer": self.place_call_described}).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class Connection:
    """One client connection: requests parsed from its buffer in order, answers written as they come."""

    def __init__(self, sock: socket.socket, loop: Loop):
        self.sock = sock
        self.loop = loop
        self.buffer = b""
        self.pending = b""  # answer bytes the socket did not take yet
        self.busy = False  # a forwarded request is in flight: answers go out in order
        self.closed = False

    def readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.buffer += data
        self.serve()

    def serve(self) -> None:
        out = []
        responder = self.loop.responder
        while not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buffer[:end]
            found = _LENGTH.search(head)
            length = int(found.group(1)) if found else 0
            if len(self.buffer) < end + 4 + length:
                break
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            request_line, _, header_text = head.partition(b"\r\n")
            method, target, _version = request_line.split(b" ", 2)
            if method == b"POST" and responder.place_call_answer is not None \
                    and target.split(b"?", 1)[0].endswith(b"/placeCall"):
                responder.answered += 1
                out.append(responder.place_call_answer)
                continue
            if target == b"/_responder/stats":
                out.append(responder.stats())
                continue
            headers = [tuple(part.strip() for part in line.split(":", 1))
                       for line in header_text.decode("latin-1").split("\r\n") if ":" in line]
            self.busy = True
            self.loop.forward(self, method.decode("latin-1"), target.decode("latin-1"), headers, body)
        if out:
            self.write(b"".join(out))

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.pending:
            self.pending += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.pending = data[sent:]
            self.loop.epoll.modify(self.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def writable(self) -> None:
        try:
            sent = self.sock.send(self.pending)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self.pending = self.pending[sent:]
        if not self.pending:
            self.loop.epoll.modify(self.sock.fileno(), select.EPOLLIN)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.connections.pop(self.sock.fileno(), None)
            self.loop.epoll.unregister(self.sock.fileno())
            self.sock.close()


class Loop:
    """One thread on ``epoll``: accepts, reads, answers placeCall; what goes to the simulator is sent from
    a few threads (blocking ``requests``) and its answer handed back through a pipe.

    It was an asyncio server: asyncio's own loop, its transports and protocol calls were most of the
    responder's CPU per placeCall (0.09-0.25 ms), on the same two cores as the daphne processes measured.
    """

    def __init__(self, host: str, port: int, responder: Responder):
        self.responder = responder
        self.listener = socket.create_server((host, port), backlog=512)
        self.listener.setblocking(False)
        self.epoll = select.epoll()
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        self.epoll.register(self.wake_read, select.EPOLLIN)
        self.connections: dict[int, Connection] = {}
        self.forwarded: queue.SimpleQueue = queue.SimpleQueue()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)

    def forward(self, connection: Connection, method, target, headers, body) -> None:
        def relay():
            try:
                raw = self.responder.forward(method, target, headers, body)
            except Exception as exc:  # noqa: BLE001 - the simulator unreachable: a 502, as a proxy would
                text = f"bench responder: {exc.__class__.__name__}".encode()
                raw = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
            self.forwarded.put((connection, raw))
            os.write(self.wake_write, b"x")

        self.pool.submit(relay)

    def accept(self) -> None:
        while True:
            try:
                sock, _address = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections[sock.fileno()] = Connection(sock, self)
            self.epoll.register(sock.fileno(), select.EPOLLIN)

    def relayed(self) -> None:
        try:
            os.read(self.wake_read, 4096)
        except BlockingIOError:
            pass
        while not self.forwarded.empty():
            connection, raw = self.forwarded.get()
            connection.busy = False
            connection.write(raw)
            if not connection.closed:
                connection.serve()

    def run(self) -> None:
        listener, wake = self.listener.fileno(), self.wake_read
        while True:
            for fd, events in self.epoll.poll():
                if fd == listener:
                    self.accept()
                elif fd == wake:
                    self.relayed()
                else:
                    connection = self.connections.get(fd)
                    if connection is None:
                        continue
                    if events & select.EPOLLOUT:
                        connection.writable()
                    if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and not connection.closed:
                        connection.readable()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the simulator's URL")
    args = parser.parse_args()
    Loop(args.host, args.port, Responder(args.upstream)).run()


if __name__ == "__main__":
    main()
