"""The makeCallUrl benchmark's load generator (bench/makecall_overhead.py ``RawLoad``) against a slow server."""

import socket
import threading
import time

from bench.makecall_overhead import RawLoad

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


class SlowServer:
    """Answers each request on a connection after ``delay`` seconds, one request at a time per connection;
    counts the connections it accepted."""

    def __init__(self, delay: float):
        self.delay = delay
        self.accepted = 0
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _address = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b"\r\n\r\n" in buffer:
                _request, buffer = buffer.split(b"\r\n\r\n", 1)
                time.sleep(self.delay)
                connection.sendall(ANSWER)

    def ports(self) -> set[int]:
        return {connection.getpeername()[1] for connection in self.connections if connection.fileno() >= 0}

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


class OneProcess:
    """What ``RawLoad.open`` asks of the benchmark's daphne: its processes and the connections each accepted."""

    processes = 1

    def __init__(self, server: SlowServer):
        self.server = server

    def local_ports_by_child(self) -> list[set[int]]:
        return [self.server.ports()]


def test_it_opens_no_connection_during_a_run_and_times_a_request_from_when_it_was_due():
    # Late answers made the generator open connections mid-run (a blocking connect in its one thread, an accept
    # by a busy daphne) on exactly the requests that were late; a request that waited for a connection was
    # then timed from when it could be sent, its wait not counted.
    server = SlowServer(delay=0.1)
    load = RawLoad(f"http://127.0.0.1:{server.port}")
    try:
        load.open(4, OneProcess(server))
        assert server.accepted == 4 and load.opened == 4
        latencies, errors, _achieved = load.run("/slow", rate=80, seconds=0.5)  # 40 requests, 4 connections
        assert errors == 0 and len(latencies) == 40
        assert server.accepted == 4 and load.opened_during_run == 0
        assert load.late == 36
        # 40 requests 12.5 ms apart, 4 at a time, 100 ms each: the last one due at 0.49 s is answered at ~1.0 s.
        assert max(latencies) > 400, sorted(latencies)[-5:]
        assert {child for _sent, _ms, child in load.samples} == {0}
    finally:
        load.close()
        server.close()
