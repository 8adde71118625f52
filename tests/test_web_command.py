"""``python -m ctihub.web``'s reading of daphne's arguments when several processes share the port."""

import pytest

from ctihub.web import listen_address


def test_it_listens_where_daphnes_arguments_say_with_daphnes_defaults():
    assert listen_address(["-b", "0.0.0.0", "-p", "8000", "ctihub.asgi:application"]) == ("0.0.0.0", 8000)
    assert listen_address(["--port", "9000", "ctihub.asgi:application"]) == ("127.0.0.1", 9000)
    assert listen_address(["ctihub.asgi:application"]) == ("127.0.0.1", 8000)


@pytest.mark.parametrize("binding, reason", [
    (["-u", "/tmp/ctihub.sock"], "with -u, -e or --fd set WEB_PROCESSES=1"),
    (["--fd", "3"], "with -u, -e or --fd set WEB_PROCESSES=1"),
    (["-e", "tcp:port=8000"], "with -u, -e or --fd set WEB_PROCESSES=1"),
    (["-b", "::", "-p", "8000"], "IPv4 only, not ::; set WEB_PROCESSES=1"),
])
def test_it_refuses_a_binding_its_children_could_not_share(binding, reason):
    with pytest.raises(SystemExit) as exited:
        listen_address([*binding, "ctihub.asgi:application"])
    assert reason in str(exited.value.code)


def test_it_binds_one_process_s_port_itself_with_the_long_backlog():
    """Twisted's backlog of 50 overflowed ~820 times in a storm of 1,000 consoles (issue 16)."""
    from ctihub.web import LISTEN_BACKLOG, _own_listening_socket
    from tests.support.processes import free_port

    port = free_port()
    sock = _own_listening_socket(["-b", "127.0.0.1", "-p", str(port), "ctihub.asgi:application"])
    try:
        assert sock.getsockname() == ("127.0.0.1", port) and LISTEN_BACKLOG > 50
        # The kernel's view: a listening socket's Send-Q is its backlog (ss -ltn).
        import subprocess

        listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
        assert int(listing[2]) == min(LISTEN_BACKLOG, int(open("/proc/sys/net/core/somaxconn").read())), listing
    finally:
        sock.close()
    assert _own_listening_socket(["-u", "/tmp/ctihub.sock", "ctihub.asgi:application"]) is None
    assert _own_listening_socket(["-b", "::1", "-p", str(port), "ctihub.asgi:application"]) is None


def test_it_pretty_prints_a_websocket_s_options_only_for_a_debug_line_written(monkeypatch):
    """autobahn formatted them for every websocket, logged or not: 5% of daphne's CPU in a connect storm."""
    import pprint

    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from autobahn.websocket import protocol
    from twisted.internet.testing import StringTransport

    from ctihub import web

    made = []
    monkeypatch.setattr(protocol, "pformat", lambda value: made.append(value) or pprint.pformat(value))
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    factory.buildProtocol(None).makeConnection(StringTransport())
    assert len(made) == 1  # autobahn's own: each connection, debug lines off
    made.clear()
    monkeypatch.setattr(pprint, "pformat", lambda value: made.append(value) or "pretty")
    web.pretty_print_only_when_logged()
    factory.buildProtocol(None).makeConnection(StringTransport())
    assert made == []
    assert f"{protocol.pformat([('a', 1)])}" == "pretty"  # the text, when a line is written
