"""ctihub.http_client: the environment read once per host, and requests' semantics on its leaner path."""

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from ctihub.http_client import HttpClient


class RecordingAdapter(requests.adapters.HTTPAdapter):
    """Answers 200 to everything and keeps what it was asked to send and how."""

    def __init__(self):
        super().__init__()
        self.sent: list[tuple[requests.PreparedRequest, dict]] = []

    def send(self, request, **kwargs):
        self.sent.append((request, kwargs))
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        response.request = request
        response.url = request.url
        return response


@pytest.fixture
def environment_reads(monkeypatch):
    """How many times proxy settings were read from the environment."""
    reads = []
    original = urllib.request.getproxies_environment

    def counting():
        reads.append(1)
        return original()

    monkeypatch.setattr(urllib.request, "getproxies_environment", counting)
    return reads


def test_it_reads_proxy_settings_from_the_environment_once_per_host(monkeypatch, environment_reads):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    adapter = RecordingAdapter()
    http = HttpClient("test", adapter=adapter)

    http.request("POST", "http://pbx.example/one")
    reads_for_first_request = len(environment_reads)
    for n in range(5):
        http.request("POST", f"http://pbx.example/more/{n}")
    assert reads_for_first_request > 0
    assert len(environment_reads) == reads_for_first_request  # nothing read again for this host

    http.request("POST", "http://direct.example/x")
    reads_after_second_host = len(environment_reads)
    http.request("POST", "http://direct.example/y")
    assert len(environment_reads) == reads_after_second_host
    assert [kwargs["proxies"].get("http") for _request, kwargs in adapter.sent] == (
        ["http://proxy.example:3128"] * 6 + [None, None])


def test_it_uses_the_ca_bundle_the_environment_names_for_the_default_trust_store(monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/our-bundle.pem")
    adapter = RecordingAdapter()
    HttpClient("default", adapter=adapter).request("POST", "https://crm.example/a")
    HttpClient("own", adapter=adapter, verify="/etc/ssl/account.pem").request("POST", "https://pbx.example/a")
    assert [kwargs["verify"] for _request, kwargs in adapter.sent] == ["/etc/ssl/our-bundle.pem", "/etc/ssl/account.pem"]


class EchoHandler(BaseHTTPRequestHandler):
    """Answers with what it received; the first answer sets a cookie."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        answer = json.dumps({"path": self.path, "headers": dict(self.headers), "body": body}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if self.path.startswith("/first"):
            self.send_header("Set-Cookie", "shop=42; Path=/")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_it_sends_what_a_requests_session_would(echo_url):
    http = HttpClient("test")
    first = http.request("POST", f"{echo_url}/first", params={"a": "1"}, json={"x": 1})
    seen = first.json()
    assert seen["path"] == "/first?a=1"
    assert json.loads(seen["body"]) == {"x": 1}
    assert seen["headers"]["User-Agent"] == "ctihub/1.0"
    assert seen["headers"]["Accept-Encoding"] == "gzip, deflate"
    assert seen["headers"]["Content-Type"] == "application/json"
    assert first.elapsed.total_seconds() >= 0 and first.history == []

    # The session's cookie jar keeps what the server set; a None header drops the session's own.
    second = http.request("POST", f"{echo_url}/second", data=b"raw", headers={"User-Agent": None, "X-Extra": "1"})
    seen = second.json()
    assert seen["headers"]["Cookie"] == "shop=42"
    assert seen["headers"].get("User-Agent") != "ctihub/1.0" and seen["headers"]["X-Extra"] == "1"
    assert seen["body"] == "raw"
