"""WebSocketStream against a bare websocket server: text frames decoded, and checked as UTF-8 in C."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading

import pytest

from telephony.providers.base import StreamClosed, WebSocketStream

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def serve_frames(payloads: list[bytes]) -> tuple[str, threading.Thread]:
    """A server that accepts one websocket and sends each payload as one unmasked text frame."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def run():
        conn, _ = listener.accept()
        with conn, listener:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            for payload in payloads:
                header = bytes([0x81, len(payload)]) if len(payload) < 126 else \
                    bytes([0x81, 126]) + len(payload).to_bytes(2, "big")
                conn.sendall(header + payload)
            conn.recv(1)  # until the client goes

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return f"ws://127.0.0.1:{port}/", thread


def test_it_checks_a_text_frames_utf8_without_websocket_clients_python_loop(monkeypatch):
    """websocket-client's own check walked every byte in Python: a third of a millisecond per myCrm frame."""
    def python_loop(_data):
        raise AssertionError("UTF-8 checked byte by byte in Python")

    monkeypatch.setattr("websocket._abnf.validate_utf8", python_loop)
    frame = ('{"event": "callRinging", "displayName": "Zoë Lefèvre", "pad": "' + "x" * 400 + '"}').encode()
    url, server = serve_frames([frame])
    stream = WebSocketStream.connect(url, headers=[], timeout=5)
    try:
        assert stream.recv(5) == frame.decode()
    finally:
        stream.close()
    server.join(5)


def test_it_closes_the_stream_on_a_text_frame_that_is_not_utf8():
    url, server = serve_frames([b'{"ok": 1}', b'{"name": "\xff\xfe"}'])
    stream = WebSocketStream.connect(url, headers=[], timeout=5)
    try:
        assert stream.recv(5) == '{"ok": 1}'
        with pytest.raises(StreamClosed, match="cannot decode"):
            stream.recv(5)
    finally:
        stream.close()
    server.join(5)


def test_it_reads_a_frame_and_those_behind_it_in_one_read_of_the_socket():
    """websocket-client read each frame in three reads (header, length, payload), each a poll and a recv."""
    frames = [('{"event": "callRinging", "n": %d, "pad": "%s"}' % (n, "x" * 200)).encode() for n in range(3)]
    url, server = serve_frames(frames)
    stream = WebSocketStream.connect(url, headers=[], timeout=5)
    reads = []
    real_recv = stream.ws.sock.recv

    class CountingSocket:  # socket.socket's methods are read-only: a proxy counts the reads
        def __getattr__(self, name):
            return getattr(real_sock, name)

        def recv(self, size):
            data = real_recv(size)
            reads.append(len(data))
            return data

    real_sock = stream.ws.sock
    try:
        import time

        time.sleep(0.3)  # all three frames in the socket's buffer
        stream.ws.sock = CountingSocket()
        assert [stream.recv(5) for _ in frames] == [frame.decode() for frame in frames]
        assert len(reads) == 1 and not stream.pending()
    finally:
        stream.ws.sock = real_sock
        stream.close()
    server.join(5)



def test_it_reads_the_handshake_a_line_at_a_time_leaving_what_follows_the_headers_on_the_socket():
    # websocket-client read the headers a byte per system call: a quarter of a handover's CPU (issue 19).
    import websocket

    from telephony.providers import base

    assert websocket._http.recv_line is base._recv_line  # what its handshake reads the headers with
    ours, theirs = socket.socketpair()
    try:
        ours.settimeout(0.5)
        theirs.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi")
        assert [base._recv_line(ours) for _ in range(3)] == [
            b"HTTP/1.1 101 Switching Protocols\r\n", b"Upgrade: websocket\r\n", b"\r\n"]
        assert ours.recv(16) == b"\x81\x02hi", "the first frame is still the socket's"
        theirs.sendall(b"Upgr")
        with pytest.raises(websocket.WebSocketTimeoutException):
            base._recv_line(ours)  # half a line, then nothing
        theirs.sendall(b"ade: x\r\n")
        assert base._recv_line(ours) == b"ade: x\r\n"  # the half read before the timeout is the caller's loss
        theirs.close()
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            base._recv_line(ours)
    finally:
        ours.close()
