"""ctihub.lib.http_client: the environment read once per host, and requests' semantics on its leaner path."""

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from ctihub.lib.http_client import HttpClient, HttpError


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
    for _again in range(2):  # a refused pair is never remembered as checked
        with pytest.raises(Exception) as raised:
            http.request("POST", "http://pbx.example/a", headers={"Cookie": value}, data=b"x")
        assert isinstance(raised.value, (requests.exceptions.InvalidHeader, HttpError))
    assert adapter.sent == []


def test_it_checks_each_header_once_and_skips_what_gives_nothing(monkeypatch):
    # requests checks every header pair, looks for a Cookie header in the jar and for credentials in the URL
    # on every request: ~20% of a PBX request's CPU, the same answer each time (issue 16).
    import http.cookiejar

    from ctihub.lib import http_client

    checked, jar_looks, url_looks = [], [], []
    monkeypatch.setattr(http_client, "_VALID_HEADERS", set())
    monkeypatch.setattr(http_client, "check_header_validity",
                        lambda header: checked.append(header) or requests.utils.check_header_validity(header))
    monkeypatch.setattr(http.cookiejar.CookieJar, "add_cookie_header", lambda self, request: jar_looks.append(1))
    monkeypatch.setattr(requests.models, "get_auth_from_url", lambda url: url_looks.append(url) or ("", ""))
    adapter = RecordingAdapter()
    http = HttpClient("test", adapter=adapter)
    for _ in range(3):
        http.request("POST", "http://pbx.example/a", headers={"X-Application": "myRCC;tok"}, data=b"x")
    sent_names = {name for name in adapter.sent[0][0].headers if name != "Content-Length"}  # set by the body step
    assert len(checked) == len(sent_names) and {name for name, _value in checked} == sent_names  # once each
    assert jar_looks == [] and url_looks == []
    assert len(adapter.sent) == 3


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


class VariedHandler(BaseHTTPRequestHandler):
    """Answers as real servers do: gzip, chunked, repeated Set-Cookie, slow, closing; records connections."""

    protocol_version = "HTTP/1.1"  # keep-alive, as a PBX
    peers: list = []

    def do_GET(self):
        type(self).peers.append(self.client_address)
        if self.path == "/gzip":
            import gzip

            body = gzip.compress(b'{"zipped": true}')
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/cookies":
            self.send_response(200)
            self.send_header("Set-Cookie", "a=1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT")
            self.send_header("Set-Cookie", "b=2; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/slow":
            import time

            time.sleep(1.5)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/close":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"ok")
            self.close_connection = True
        else:
            self.send_response(404)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"not found")

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def varied_server():
    VariedHandler.peers = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), VariedHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_it_sends_the_usual_request_on_a_kept_alive_connection_of_its_own(varied_server, monkeypatch):
    # requests' adapter and urllib3's pool were over half of a PBX request's CPU (issue 16): the usual
    # request goes on the client's own kept-alive connection, with the same answer.
    through_adapter = []
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send",
                        lambda self, *args, **kwargs: through_adapter.append(args) or pytest.fail("adapter used"))
    url = f"http://127.0.0.1:{varied_server.server_port}"
    http = HttpClient("test")
    for _ in range(3):
        answer = http.request("GET", f"{url}/gzip")
        assert answer.status_code == 200 and answer.json() == {"zipped": True}
        assert answer.encoding == "utf-8" and answer.url == f"{url}/gzip" and answer.request.method == "GET"
    assert through_adapter == []
    assert len(set(VariedHandler.peers)) == 1  # one connection carried the three requests


def test_it_answers_as_requests_would_on_its_own_connections(varied_server):
    url = f"http://127.0.0.1:{varied_server.server_port}"
    http = HttpClient("test")
    assert http.request("GET", f"{url}/chunked").text == "hello world"
    cookies = http.request("GET", f"{url}/cookies")
    assert cookies.raw.headers.getlist("Set-Cookie") == [
        "a=1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT", "b=2; Path=/"]
    assert cookies.headers["Set-Cookie"] == "a=1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT, b=2; Path=/"
    assert cookies.cookies.get("b") == "2" and http.session.cookies.get("a") == "1"
    missing = http.request("GET", f"{url}/nothing")
    assert (missing.status_code, missing.text, missing.ok) == (404, "not found", False)
    head = http.request("HEAD", f"{url}/gzip")
    assert head.status_code == 200 and head.content == b""
    # The server closes after this answer, and the next request opens a new connection.
    assert http.request("GET", f"{url}/close").text == "ok"
    assert http.request("GET", f"{url}/gzip").json() == {"zipped": True}
    assert len(set(VariedHandler.peers)) == 2


class ForgetfulHandler(VariedHandler):
    timeout = 0.2  # the server closes a connection idle this long, without a word (as a PBX's idle timeout)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()


def test_it_opens_a_new_connection_when_the_server_closed_the_idle_one():
    import time

    VariedHandler.peers = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ForgetfulHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        http = HttpClient("test")
        assert http.request("POST", f"{url}/gzip", data=b"x").ok
        time.sleep(1)
        # A POST is never sent twice: the closed connection is noticed before anything is sent on it.
        assert http.request("POST", f"{url}/gzip", data=b"x").json() == {"zipped": True}
        assert len(set(VariedHandler.peers)) == 2
    finally:
        server.shutdown()
        server.server_close()


def test_it_turns_timeouts_and_refusals_on_its_own_connections_into_http_errors(varied_server):
    url = f"http://127.0.0.1:{varied_server.server_port}"
    http = HttpClient("test", connect_timeout=1, read_timeout=0.3, get_retries=0)
    with pytest.raises(HttpError, match="ReadTimeout"):
        http.request("GET", f"{url}/slow")
    assert http.request("GET", f"{url}/gzip").ok  # the timed-out connection was not given back
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(HttpError, match="ConnectionError"):
        http.request("GET", f"http://127.0.0.1:{port}/")


def test_it_reuses_a_connection_whose_descriptor_is_over_1023(varied_server):
    # daphne holds thousands of sockets: select() refuses a descriptor over 1023, poll() does not.
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200 if hard == resource.RLIM_INFINITY else min(hard, 1200)
    if wanted < 1200:
        pytest.skip(f"cannot open 1,200 descriptors here (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        url = f"http://127.0.0.1:{varied_server.server_port}"
        http = HttpClient("test")
        assert http.request("GET", f"{url}/gzip").ok
        (connection,) = [c for connections in http._kept_alive._idle.values() for c in connections]
        assert connection.sock.fileno() > 1023
        assert http.request("GET", f"{url}/gzip").json() == {"zipped": True}
        assert len(set(VariedHandler.peers)) == 1
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_it_prepares_a_url_once_however_often_it_is_sent(monkeypatch):
    # Parsing, IDNA and requoting the same placeCall URL was 14% of a PBX request's CPU (issue 16).
    from ctihub.lib import http_client

    http_client._PREPARED_URLS.clear()
    prepared_urls = []
    original = requests.PreparedRequest.prepare_url
    monkeypatch.setattr(requests.PreparedRequest, "prepare_url",
                        lambda self, url, params: prepared_urls.append(url) or original(self, url, params))
    adapter = RecordingAdapter()
    http = HttpClient("test", adapter=adapter)
    for _ in range(3):
        http.request("POST", "http://PBX.example/a b/é", data=b"x")
    http.request("POST", "http://PBX.example/a b/é", data=b"x", params={"q": "1"})  # params: prepared each time
    assert prepared_urls == ["http://PBX.example/a b/é", "http://PBX.example/a b/é"]
    assert [sent.url for sent, _kwargs in adapter.sent] == ["http://pbx.example/a%20b/%C3%A9"] * 3 + [
        "http://pbx.example/a%20b/%C3%A9?q=1"]


HEADER_BLOCKS = [
    b"Content-Type: application/json; charset=utf-8\r\nContent-Length: 2\r\n\r\n",
    b"Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2\r\nX-Empty:\r\nX-Spaced: \t value with trailing  \r\n\r\n",
    b"Server: caf\xe9\nContent-Length: 0\n\n",  # bare LF endings, a latin-1 byte
    b"X-Folded: first\r\n  second\r\nContent-Length: 0\r\n\r\n",  # obsolete line folding
    b"Not a header line\r\nContent-Length: 0\r\n\r\n",
    b": no name\r\nContent-Length: 0\r\n\r\n",
    b"X-Stray: a\rb\r\nContent-Length: 0\r\n\r\n",
    b"Name With Space: x\r\n\r\n",
    b"Content-Length: 0\r\n",  # the connection ended before the blank line
    b"\r\n",
]


@pytest.mark.parametrize("block", HEADER_BLOCKS)
def test_it_reads_an_answers_headers_as_http_client_does(block):
    import http.client
    import io

    from ctihub.lib.http_client import _parse_headers

    ours, theirs = io.BytesIO(block + b"BODY"), io.BytesIO(block + b"BODY")
    mine, reference = _parse_headers(ours), http.client.parse_headers(theirs)
    assert type(mine) is type(reference)
    assert mine.items() == reference.items() and mine.get_all("Set-Cookie") == reference.get_all("Set-Cookie")
    assert (mine.get_payload(), [type(d) for d in mine.defects]) == (reference.get_payload(),
                                                                     [type(d) for d in reference.defects])
    assert ours.read() == theirs.read()  # the body starts where it did


def test_it_reads_a_plain_answers_headers_without_the_email_package(varied_server, monkeypatch):
    # http.client parses every answer's headers with the email package's feed parser: 17% of a PBX
    # request's CPU (issue 16). Plain header lines are read without it.
    import email.parser

    parsestr, ours = email.parser.Parser.parsestr, threading.get_ident()

    def server_only(*args, **kwargs):  # the test server reads the requests' headers with it
        assert threading.get_ident() != ours, "the client read an answer's headers with the email parser"
        return parsestr(*args, **kwargs)

    monkeypatch.setattr(email.parser.Parser, "parsestr", server_only)
    url = f"http://127.0.0.1:{varied_server.server_port}"
    http = HttpClient("test")
    assert http.request("GET", f"{url}/gzip").json() == {"zipped": True}
    cookies = http.request("GET", f"{url}/cookies")
    assert cookies.raw.headers.getlist("Set-Cookie") == [
        "a=1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT", "b=2; Path=/"]
    assert http.session.cookies.get("b") == "2"
    assert http.request("GET", f"{url}/chunked").text == "hello world"


WRITTEN_REQUESTS = [
    ("GET", "http://pbx.example/restletrouter/v1/rcc/Extension?x=1", {"Accept": "application/json"}, None),
    ("POST", "http://127.0.0.1:8123/restletrouter/v1/rcc/Extension/897778778/placeCall",
     {"Content-Type": "application/json", "X-Application": "myRCC;token", "Cookie": "JSESSIONID=abc"},
     b'{"destination": "+33612345678"}'),
    ("PUT", "https://pbx.example:443/a", {"Host": "other.example"}, b"x"),
    ("DELETE", "https://[::1]:8443/a", {}, None),
    ("GET", "http://[::1]/b", {"X-Empty": ""}, None),
]


@pytest.mark.parametrize(("method", "url", "headers", "body"), WRITTEN_REQUESTS)
def test_it_writes_a_request_as_http_client_does_in_one_piece(method, url, headers, body):
    # http.client wrote the head and the body in two sends, after a dozen calls a header line (issue 16).
    import http.client
    from urllib.parse import urlsplit

    from ctihub.lib.http_client import _request_bytes

    prepared = requests.Request(method, url, headers=headers, data=body).prepare()
    parts = urlsplit(prepared.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path + (f"?{parts.query}" if parts.query else "")

    class Written:
        def __init__(self):
            self.data = []

        def sendall(self, data):
            self.data.append(bytes(data))

    connection = http.client.HTTPConnection(parts.hostname, port)
    connection.default_port = 443 if parts.scheme == "https" else 80
    connection.sock = written = Written()
    connection.putrequest(prepared.method, target, skip_host="Host" in prepared.headers, skip_accept_encoding=True)
    for name, value in prepared.headers.items():
        connection.putheader(name, value)
    connection.endheaders(prepared.body)
    assert _request_bytes(prepared, target, parts.scheme, parts.hostname, port, prepared.body) == b"".join(written.data)


@pytest.mark.parametrize(("target", "headers"), [("/a b", {}), ("/a", {"X-Bytes": b"v"}), ("/a", {"X-Latin": "caf\xe9"})])
def test_it_leaves_to_http_client_a_request_it_writes_its_own_way(target, headers):
    from ctihub.lib.http_client import _request_bytes

    prepared = requests.Request("GET", "http://pbx.example/a", headers=headers).prepare()
    assert _request_bytes(prepared, target, "http", "pbx.example", 80, None) is None


CANNED_ANSWERS = {
    "plain": b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 11\r\n\r\n{\"a\": true}",
    "cookies": b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; Path=/\r\nContent-Length: 0\r\n\r\n",
    "no reason": b"HTTP/1.1 404\r\nContent-Length: 9\r\nX-Spaced: \t value  \r\n\r\nnot found",
    "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
    "http/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "folded": b"HTTP/1.1 200 OK\r\nX-Folded: first\r\n  second\r\nContent-Length: 2\r\n\r\nok",
    "no content": b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    "bare lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "split": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n|hello",  # the body written after a pause
    "gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n",
}


@pytest.fixture
def canned_server():
    """A server that answers every request on a connection with the bytes of CANNED_ANSWERS[path]."""
    import contextlib
    import gzip
    import socket
    import time

    listener = socket.create_server(("127.0.0.1", 0))

    def serve(sock):
        # A client that resets the connection instead of closing it (a kept-alive one dropped) is gone all the same.
        with sock, contextlib.suppress(ConnectionResetError):
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    more = sock.recv(65536)
                    if not more:
                        return
                    data += more
                head, _, data = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(data) < length:
                    data += sock.recv(65536)
                data = data[length:]
                name = head.split(b" ")[1].decode().lstrip("/").replace("%20", " ")
                answer = CANNED_ANSWERS[name]
                # The pause mark is read in the template only: a body byte that happens to be "|" is sent.
                first, _, rest = answer.partition(b"|")
                if name == "gzip":
                    # A fixed mtime: gzip stamps the time in its header, and those bytes once held a "|".
                    body = gzip.compress(b'{"zipped": true}', mtime=0)
                    first = first % len(body) + body
                sock.sendall(first)
                if rest:
                    time.sleep(0.05)
                    sock.sendall(rest)
                if b"close" in answer or answer.startswith(b"HTTP/1.0"):
                    return

    def accept():
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.mark.parametrize("name", sorted(CANNED_ANSWERS))
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_it_reads_an_answer_as_requests_does(canned_server, name, method):
    http, reference = HttpClient("test"), requests.Session()
    for _ in range(2):  # the second time on the kept-alive connection, unless the server closed it
        ours = http.request(method, f"{canned_server}/{name}")
        theirs = reference.request(method, f"{canned_server}/{name}")
        assert (ours.status_code, ours.reason, ours.content, ours.encoding) == (
            theirs.status_code, theirs.reason, theirs.content, theirs.encoding)
        if name != "folded":  # the client's own connections keep a folded value as http.client reads it
            # ("first\r\n  second"; urllib3 unfolds it): so before this reader too, left as it was
            assert list(ours.headers.items()) == list(theirs.headers.items())
            assert list(ours.raw.headers.items()) == list(theirs.raw.headers.items())
        assert ours.cookies.get_dict() == theirs.cookies.get_dict()
        assert http.session.cookies.get_dict() == reference.cookies.get_dict()


def test_it_reads_the_usual_answer_without_http_clients_request_and_reader(varied_server, monkeypatch):
    # http.client's request writing and its buffered reader were a fifth of a PBX request's CPU (issue 16).
    import http.client

    from ctihub.lib import http_client

    def not_this_way(*args, **kwargs):
        raise AssertionError("the usual request went through http.client's writer or reader")

    monkeypatch.setattr(http.client.HTTPConnection, "putrequest", not_this_way)
    monkeypatch.setattr(http_client._Answer, "begin", not_this_way)
    url = f"http://127.0.0.1:{varied_server.server_port}"
    http = HttpClient("test")
    for _ in range(3):
        assert http.request("GET", f"{url}/gzip").json() == {"zipped": True}
    cookies = http.request("GET", f"{url}/cookies")
    assert cookies.raw.headers.getlist("Set-Cookie") == [
        "a=1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT", "b=2; Path=/"]
    assert http.session.cookies.get("b") == "2"
    assert len(set(VariedHandler.peers)) == 1


def test_it_merges_and_folds_headers_without_the_mappings_generic_methods(varied_server, monkeypatch):
    # CaseInsensitiveDict's inherited update and items walked every header a few times a request: ~10% of a
    # PBX request's CPU (issue 16). The same headers, spelling and order, built on its store.
    from requests.structures import CaseInsensitiveDict

    http = HttpClient("test")  # requests.Session builds its default headers with update: not a request's work
    updates, update = [], CaseInsensitiveDict.update

    def recorded(self, *args, **kwargs):
        if (args and args[0]) or kwargs:
            updates.append(args)
        return update(self, *args, **kwargs)

    monkeypatch.setattr(CaseInsensitiveDict, "update", recorded)
    url = f"http://127.0.0.1:{varied_server.server_port}"
    answer = http.request("GET", f"{url}/cookies", headers={"x-a": "1", "user-agent": "mine", "Accept-Encoding": None})
    assert updates == []
    assert answer.headers["set-cookie"] == "a=1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT, b=2; Path=/"
    assert list(answer.request.headers.items())[:2] == [("user-agent", "mine"), ("Accept", "*/*")]
    assert "Accept-Encoding" not in answer.request.headers and answer.request.headers["X-A"] == "1"


def test_it_gives_one_shared_client_a_name_and_trust_store():
    from ctihub.lib.http_client import shared_client

    first = shared_client("test.shared")
    assert shared_client("test.shared") is first
    assert shared_client("test.shared", verify=False) is not first
    assert shared_client("test.other") is not first
