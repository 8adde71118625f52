"""ctihub.http_client: the environment read once per host, and requests' semantics on its leaner path."""

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from ctihub.http_client import HttpClient, HttpError


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


def session_prepared(method, url, *, headers=None, data=None, params=None, json=None, cookies=None):
    """What a requests.Session with HttpClient's headers and jar would prepare for the same request."""
    session = requests.Session()
    session.headers["Accept-Encoding"] = "gzip, deflate"
    session.headers["User-Agent"] = "ctihub/1.0"
    if cookies:
        session.cookies.update(cookies)
    return session.prepare_request(requests.Request(method, url, headers=headers, data=data, params=params, json=json))


PLAIN_REQUESTS = [  # what the PBX providers send: the body already in bytes, no params, an explicit Cookie
    ("POST", "http://pbx.example/restletrouter/v1/rcc/Call", {"Content-Type": "application/json", "X-Application":
     "myRCC;tok", "Cookie": "myRCC_SESSIONID=abc"}, b'{"destination": "+33612345678"}'),
    ("GET", "http://pbx.example/restletrouter/v1/rcc/Extension?offset=0&length=1", {"Accept": "application/json"}, None),
    ("POST", "http://pbx.example/logout", None, None),  # no body: Content-Length 0, as requests sends it
    ("DELETE", "http://PBX.example:8080/a b/é?q=1 2", {"User-Agent": None}, b""),  # requoted, the header dropped
]


@pytest.mark.parametrize("method,url,headers,data", PLAIN_REQUESTS)
def test_it_prepares_a_plain_request_as_requests_does(method, url, headers, data):
    # The client merges the session's headers itself (issue 16: Session.request's generic merging was a
    # fifth of a PBX request's CPU); what goes on the wire must be what requests would send.
    expected = session_prepared(method, url, headers=headers, data=data)
    adapter = RecordingAdapter()
    http = HttpClient("test", adapter=adapter)
    http.request(method, url, headers=headers, data=data)
    http.request(method, url, headers=headers, data=data)
    for sent, _kwargs in adapter.sent:
        assert (sent.method, sent.url, dict(sent.headers), sent.body) == (
            expected.method, expected.url, dict(expected.headers), expected.body)
        assert list(sent.headers) == list(expected.headers)  # in the same order on the wire
        assert sent.hooks == {"response": []}


@pytest.mark.parametrize("kwargs,cookies", [
    ({"params": {"a": "1 2"}}, None),
    ({"json": {"x": 1}}, None),
    ({"data": {"form": "v"}}, None),
    ({"data": "text body"}, None),
    ({"data": b"body"}, {"shop": "42"}),  # a cookie in the jar: requests adds it
])
def test_it_prepares_any_other_request_as_requests_does(kwargs, cookies):
    method, url = "POST", "http://crm.example/api/v5/x"
    expected = session_prepared(method, url, cookies=cookies, **kwargs)
    adapter = RecordingAdapter()
    http = HttpClient("test", adapter=adapter)
    if cookies:
        http.session.cookies.update(cookies)
    http.request(method, url, **kwargs)
    sent, _kwargs = adapter.sent[0]
    assert (sent.method, sent.url, dict(sent.headers), sent.body) == (
        expected.method, expected.url, dict(expected.headers), expected.body)


def test_it_sends_basic_auth_from_credentials_in_the_url_as_requests_does():
    adapter = RecordingAdapter()
    HttpClient("test", adapter=adapter).request("POST", "http://user:pw@pbx.example/a", data=b"x")
    assert adapter.sent[0][0].headers["Authorization"] == "Basic dXNlcjpwdw=="


@pytest.mark.parametrize("value", ["abc\r\nX-Injected: 1", " leading-space", "abc\nX-Injected: 1"])
def test_it_refuses_a_header_value_that_would_inject_another_header(value):
    adapter = RecordingAdapter()
    http = HttpClient("test", adapter=adapter)
    with pytest.raises(Exception) as raised:
        http.request("POST", "http://pbx.example/a", headers={"Cookie": value}, data=b"x")
    assert isinstance(raised.value, (requests.exceptions.InvalidHeader, HttpError))
    assert adapter.sent == []


def test_it_keeps_cookies_a_plain_request_is_answered_with(echo_url):
    http = HttpClient("test")
    http.request("POST", f"{echo_url}/first-plain", data=b"raw", headers={"Content-Type": "text/plain"})
    assert http.session.cookies.get("shop") == "42"
    seen = http.request("POST", f"{echo_url}/again", data=b"raw").json()
    assert seen["headers"]["Cookie"] == "shop=42"
    assert seen["headers"]["Content-Length"] == "3" and seen["body"] == "raw"


def test_it_gives_a_plain_request_the_clients_timeouts_and_trust_store(monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    adapter = RecordingAdapter()
    http = HttpClient("test", adapter=adapter, connect_timeout=1.5, read_timeout=4, verify="/etc/ssl/pbx.pem")
    http.request("POST", "https://pbx.example/a", data=b"x")
    http.request("POST", "https://pbx.example/a", data=b"x", timeout=(0.5, 1))
    assert [(kwargs["timeout"], kwargs["verify"], kwargs["stream"]) for _sent, kwargs in adapter.sent] == [
        ((1.5, 4), "/etc/ssl/pbx.pem", False), ((0.5, 1), "/etc/ssl/pbx.pem", False)]
