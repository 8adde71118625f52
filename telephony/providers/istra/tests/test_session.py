"""The Istra session layer against a scripted Istra behind HttpClient's adapter."""

from __future__ import annotations

import base64
import gzip
import io
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import certifi
import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPHeaderDict, HTTPResponse

from ctihub.lib.http_client import HttpClient
from telephony.providers.base import ProviderError, SessionExpired, trust_store
from telephony.providers.istra import session as istra_session
from telephony.providers.istra.session import IstraSession, enduser_username, rcc_username

MYCRM_FIXTURES = Path(__file__).resolve().parents[2] / "istra_mycrm" / "tests" / "fixtures"
BASE_URL = "http://istra1/restletrouter"
SESSION_ID = "3353130538180092770"


def error_body(name: str) -> dict:
    return json.loads((MYCRM_FIXTURES / f"error_{name}.json").read_text())


def reply(status: int = 200, body=None, headers: list[tuple[str, str]] | None = None):
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    return status, headers or [], data


def login_reply(token: str, session_id: str = SESSION_ID, app: str = "myCrm"):
    # As in the myCrm doc's Login example.
    return reply(headers=[
        ("Set-Cookie", f"{app}_SESSIONID={session_id};Path=/restletrouter;HttpOnly"),
        ("X-Application", f"{app};{token}"),
    ])


class FakeIstra(HTTPAdapter):
    """Answers logins with fresh tokens and other requests from a per-path script."""

    def __init__(self, app: str = "myCrm"):
        super().__init__()
        self.app = app
        self.sent: list[requests.PreparedRequest] = []
        self.scripts: dict[str, list] = {}
        self.logins = 0

    def script(self, path: str, *outcomes) -> None:
        self.scripts.setdefault(path, []).extend(outcomes)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path_url.split('/restletrouter/', 1)[1]}" for r in self.sent]

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        self.sent.append(request)
        path = request.path_url.split("/restletrouter/", 1)[1].split("?")[0]
        queue = self.scripts.get(path)
        if queue:
            outcome = queue.pop(0)
        elif path == "v1/service/Login":
            self.logins += 1
            outcome = login_reply(f"tok-{self.logins}", app=self.app)
        else:
            outcome = reply()
        if callable(outcome):
            outcome = outcome(request)
        if isinstance(outcome, Exception):
            raise outcome
        status, headers, body = outcome
        header_dict = HTTPHeaderDict()
        for name, value in headers:
            header_dict.add(name, value)
        raw = HTTPResponse(body=io.BytesIO(body), headers=header_dict, status=status, preload_content=False,
                           decode_content=True, request_method=request.method)
        return self.build_response(request, raw)


def make_account(**fields):
    defaults = {"base_url": BASE_URL, "ws_url": "", "login": "chatfield", "password": "0000", "enterprise": "e1",
                "ca_bundle": "", "pk": 1}
    return SimpleNamespace(**{**defaults, **fields})


def make_session(fake: FakeIstra | None = None, app: str = "myCrm", **account_fields) -> tuple[IstraSession, FakeIstra]:
    fake = fake or FakeIstra(app)
    account = make_account(**account_fields)
    username = enduser_username(account.login) if app != "myRCC" else rcc_username(account.login, account.enterprise)
    return IstraSession(account, app, username, http=HttpClient("test", adapter=fake)), fake


# --- login ---------------------------------------------------------------------------------

def test_it_logs_in_to_mycrm_as_enduser_with_the_docs_exact_headers():
    session, fake = make_session()
    session.login()
    login = fake.sent[0]
    assert (login.method, login.url) == ("POST", f"{BASE_URL}/v1/service/Login")
    # The myCrm doc's example: ENDUSER:chatfield with password 0000.
    assert login.headers["Authorization"] == "Basic RU5EVVNFUjpjaGF0ZmllbGQ6MDAwMA=="
    assert login.headers["X-Application"] == "myCrm"
    assert login.headers["Content-Type"] == "application/json"
    assert login.headers["Accept"] == "application/json"
    assert "Cookie" not in login.headers


def test_it_logs_in_to_myrcc_as_login_pipe_enterprise():
    session, fake = make_session(app="myRCC", login="rccadmin", password="pw", enterprise="e1")
    session.login()
    credentials = base64.b64decode(fake.sent[0].headers["Authorization"].split()[1]).decode()
    assert credentials == "rccadmin|e1:pw"
    assert fake.sent[0].headers["X-Application"] == "myRCC"


def test_it_refuses_bad_credentials_permanently():
    session, fake = make_session()
    fake.script("v1/service/Login", reply(401, {"code": "ROUTER_ERR_401", "message": "authentication failed"}))
    with pytest.raises(ProviderError) as refused:
        session.login()
    assert refused.value.permanent
    assert refused.value.status == 401
    assert "check the login and password" in str(refused.value)
    assert "0000" not in str(refused.value)


def test_it_says_the_users_extension_is_not_allowed_for_mycrm_permanently():
    session, fake = make_session()
    fake.script("v1/service/Login", reply(401, error_body("401_MYCRM_ERR_403")))
    with pytest.raises(ProviderError) as refused:
        session.login()
    assert refused.value.permanent
    assert (refused.value.code, refused.value.status) == ("MYCRM_ERR_403", 401)
    assert "not allowed to use myCrm" in str(refused.value)


def test_it_refuses_a_login_answer_without_a_token():
    session, fake = make_session()
    fake.script("v1/service/Login", reply(200, headers=[("Set-Cookie", f"myCrm_SESSIONID={SESSION_ID}")]))
    with pytest.raises(ProviderError, match="sent no token"):
        session.login()
    assert not session.logged_in


# --- the session on later requests -------------------------------------------------------------

def test_it_sends_the_cookie_and_token_on_every_later_request():
    session, fake = make_session()
    session.request("GET", "v1/crm/GetTerminals")
    session.request("GET", "v1/crm/GetTerminals")
    assert fake.paths() == ["POST v1/service/Login", "GET v1/crm/GetTerminals", "GET v1/crm/GetTerminals"]
    for sent in fake.sent[1:]:
        assert sent.headers["X-Application"] == "myCrm;tok-1"
        assert sent.headers["Cookie"] == f"myCrm_SESSIONID={SESSION_ID}"
        assert "Authorization" not in sent.headers


def test_it_picks_up_a_token_rotated_on_an_ordinary_response():
    session, fake = make_session()
    fake.script("v1/crm/GetTerminals", reply(200, [], headers=[("X-Application", "myCrm;tok-rotated")]), reply(200, []))
    session.request("GET", "v1/crm/GetTerminals")
    session.request("GET", "v1/crm/GetTerminals")
    assert [r.headers["X-Application"] for r in fake.sent[1:]] == ["myCrm;tok-1", "myCrm;tok-rotated"]


def test_it_picks_up_a_new_session_cookie_from_any_response():
    session, fake = make_session()
    fake.script("v1/crm/GetTerminals",
                reply(200, [], headers=[("Set-Cookie", "myCrm_SESSIONID=42;Path=/restletrouter;HttpOnly")]),
                reply(200, []))
    session.request("GET", "v1/crm/GetTerminals")
    session.request("GET", "v1/crm/GetTerminals")
    assert fake.sent[2].headers["Cookie"] == "myCrm_SESSIONID=42"


def test_it_asks_for_gzip_and_reads_a_gzipped_answer():
    session, fake = make_session()
    fake.script("v1/crm/GetTerminals", reply(200, gzip.compress(b'[{"terminalId":"1"}]'),
                                             headers=[("Content-Encoding", "gzip")]))
    assert session.request_json("GET", "v1/crm/GetTerminals") == [{"terminalId": "1"}]
    assert "gzip" in fake.sent[1].headers["Accept-Encoding"]


# --- expiry -----------------------------------------------------------------------------------

def test_it_logs_in_again_and_retries_once_when_the_session_expired():
    session, fake = make_session()
    fake.script("v1/crm/GetTerminals", reply(401, {"code": "ROUTER_ERR_401", "message": "session expired"}),
                reply(200, [{"terminalId": "1"}]))
    assert session.request_json("GET", "v1/crm/GetTerminals") == [{"terminalId": "1"}]
    assert fake.paths() == [
        "POST v1/service/Login", "GET v1/crm/GetTerminals", "POST v1/service/Login", "GET v1/crm/GetTerminals",
    ]
    assert fake.sent[3].headers["X-Application"] == "myCrm;tok-2"


def test_it_logs_in_again_on_a_cookie_mismatch():
    session, fake = make_session()
    fake.script("v1/crm/GetTerminals", reply(403, error_body("403_ROUTER_ERR_400")), reply(200, []))
    assert session.request_json("GET", "v1/crm/GetTerminals") == []
    assert fake.logins == 2


@pytest.mark.parametrize("refusal", [
    reply(401, {"code": "ROUTER_ERR_401", "message": "session expired"}),
    reply(403, error_body("403_ROUTER_ERR_400")),
])
def test_it_retries_only_once_and_then_raises_a_transient_error(refusal):
    session, fake = make_session()
    fake.script("v1/crm/GetTerminals", refusal, refusal, reply(200, []))
    with pytest.raises(SessionExpired) as expired:
        session.request("GET", "v1/crm/GetTerminals")
    assert not expired.value.permanent
    assert fake.logins == 2
    assert fake.paths().count("GET v1/crm/GetTerminals") == 2


def test_it_does_not_log_in_again_when_told_the_socket_needs_this_session():
    session, fake = make_session()
    fake.script("v1/crm/CallLine", reply(401, {"code": "ROUTER_ERR_401", "message": "session expired"}))
    with pytest.raises(SessionExpired):
        session.request("GET", "v1/crm/CallLine", relogin=False)
    assert fake.logins == 1


@pytest.mark.parametrize("refusal", [
    reply(401, {"code": "ROUTER_ERR_401", "message": "session expired"}),
    reply(403, error_body("403_ROUTER_ERR_400")),
])
def test_it_checks_the_session_is_alive_with_one_get_and_never_logs_in_again(refusal):
    session, fake = make_session()
    session.login()
    session.check_alive("v1/crm/GetTerminals")
    fake.script("v1/crm/GetTerminals", refusal)
    with pytest.raises(SessionExpired):
        session.check_alive("v1/crm/GetTerminals")
    assert fake.paths() == ["POST v1/service/Login", "GET v1/crm/GetTerminals", "GET v1/crm/GetTerminals"]
    assert fake.sent[1].headers["Cookie"] == f"myCrm_SESSIONID={SESSION_ID}"


def test_it_reports_a_failed_session_check_that_says_nothing_of_the_session_as_a_plain_error():
    session, fake = make_session()
    session.login()
    fake.script("v1/crm/GetTerminals", reply(503, {"code": "ROUTER_ERR_503", "message": "IPTC not started"}),
                requests.ReadTimeout("slow"))
    for _ in range(2):
        with pytest.raises(ProviderError) as failed:
            session.check_alive("v1/crm/GetTerminals")
        assert not isinstance(failed.value, SessionExpired) and not failed.value.permanent
    assert fake.paths().count("GET v1/crm/GetTerminals") == 2, "sent once each: the next check comes soon"


def test_it_does_not_log_in_to_check_a_session_already_closed():
    session, fake = make_session()
    with pytest.raises(SessionExpired):
        session.check_alive("v1/crm/GetTerminals")
    assert fake.sent == []


def test_it_logs_in_once_when_two_threads_find_the_session_expired_together():
    session, fake = make_session()
    both_sent = threading.Barrier(2, timeout=5)

    def expired_for_the_first_token(request):
        if request.headers["X-Application"] == "myCrm;tok-1":
            both_sent.wait()
            return reply(401, {"code": "ROUTER_ERR_401", "message": "session expired"})
        return reply(200, [])

    fake.script("v1/crm/GetTerminals", expired_for_the_first_token, expired_for_the_first_token)
    session.login()
    errors = []

    def fetch():
        try:
            session.request("GET", "v1/crm/GetTerminals")
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert errors == []
    assert fake.logins == 2


# --- documented errors --------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "body", "permanent", "code"), [
    (401, error_body("401_MYCRM_ERR_403"), True, "MYCRM_ERR_403"),
    (400, error_body("400_ERR_0"), True, "ERR_0"),
    (512, error_body("512_ERR_100"), False, "ERR_100"),
    (503, error_body("503_ROUTER_ERR_503"), False, "ROUTER_ERR_503"),
    (500, b"<html>Internal error</html>", False, ""),
    (404, {"code": "ROUTER_ERR_404", "message": "no resource"}, True, "ROUTER_ERR_404"),
])
def test_it_maps_each_documented_error_with_the_right_permanence(status, body, permanent, code):
    session, fake = make_session()
    fake.script("v1/crm/PlaceCall", reply(status, body))
    with pytest.raises(ProviderError) as failed:
        session.request("GET", "v1/crm/PlaceCall", params={"terminalId": "1", "destination": "555"})
    assert (failed.value.permanent, failed.value.code, failed.value.status) == (permanent, code, status)
    assert fake.logins == 1  # none of these is an expired session


@pytest.mark.parametrize(("body", "words"), [
    (error_body("400_ERR_0"), "bad terminal ID"),
    (error_body("512_ERR_100"), "out of service"),
    (error_body("503_ROUTER_ERR_503"), "IPTC"),
])
def test_it_says_what_istra_said_in_the_error(body, words):
    session, fake = make_session()
    status = {"ERR_0": 400, "ERR_100": 512, "ROUTER_ERR_503": 503}[body["code"]]
    fake.script("v1/crm/PlaceCall", reply(status, body))
    with pytest.raises(ProviderError, match=words):
        session.request("GET", "v1/crm/PlaceCall")


@pytest.mark.parametrize("status", [403, 404, 405, 409])
def test_it_takes_a_4xx_without_istras_error_body_as_transient_and_one_with_it_as_permanent(status):
    # A proxy's or Jetty's page during maintenance is not Istra refusing: a listener stopped for it until an
    # admin clicks would lose every pop-up of the account meanwhile.
    session, fake = make_session()
    fake.script("v1/crm/GetTerminals", reply(status, b"<html><body>Not Found</body></html>",
                                             headers=[("Content-Type", "text/html")]))
    with pytest.raises(ProviderError) as by_a_proxy:
        session.request("GET", "v1/crm/GetTerminals")
    assert (by_a_proxy.value.permanent, by_a_proxy.value.status) == (False, status)
    assert "without Istra's error body" in str(by_a_proxy.value)

    fake.script("v1/crm/GetTerminals", reply(status, {"code": f"ERR_{status}", "message": "no such thing"}))
    with pytest.raises(ProviderError) as by_istra:
        session.request("GET", "v1/crm/GetTerminals")
    assert (by_istra.value.permanent, by_istra.value.code) == (True, f"ERR_{status}")


def test_it_reports_an_unreachable_server_as_transient():
    session, fake = make_session()
    fake.script("v1/service/Login", requests.ConnectionError("refused"))
    with pytest.raises(ProviderError) as failed:
        session.login()
    assert not failed.value.permanent
    assert "cannot reach" in str(failed.value)


def test_it_never_resends_a_get_that_acts_after_a_timeout():
    session, fake = make_session()
    fake.script("v1/crm/PlaceCall", *[requests.ReadTimeout("slow")] * 3)
    fake.script("v1/crm/GetTerminals", *[requests.ReadTimeout("slow")] * 3)
    with pytest.raises(ProviderError):
        session.request("GET", "v1/crm/PlaceCall", retry_on_timeout=False)
    with pytest.raises(ProviderError):
        session.request("GET", "v1/crm/GetTerminals")
    assert fake.paths().count("GET v1/crm/PlaceCall") == 1
    assert fake.paths().count("GET v1/crm/GetTerminals") == 3  # an ordinary GET keeps HttpClient's retries


# --- redirects, logout, websocket, TLS -----------------------------------------------------------

def test_it_follows_a_redirect_to_another_host_with_the_same_post_body_and_session():
    session, fake = make_session(app="myRCC")
    fake.script("v1/rcc/Extension/897778778/placeCall",
                reply(302, headers=[("Location", "http://istra2/restletrouter/v1/rcc/Extension/897778778/placeCall")]),
                reply(200, {"lineId": "-5499"}))
    answer = session.request_json("POST", "v1/rcc/Extension/897778778/placeCall", body={"destination": "102"})
    assert answer == {"lineId": "-5499"}
    first, moved = fake.sent[1], fake.sent[2]
    assert moved.url == "http://istra2/restletrouter/v1/rcc/Extension/897778778/placeCall"
    assert moved.method == "POST"
    assert json.loads(moved.body) == {"destination": "102"} == json.loads(first.body)
    assert moved.headers["Cookie"] == f"myRCC_SESSIONID={SESSION_ID}"
    assert moved.headers["X-Application"] == "myRCC;tok-1"


def moved(status: int, to: str):
    return reply(status, headers=[("Location", to)])


def test_it_remembers_a_permanent_redirect_for_every_later_request_and_the_websocket():
    session, fake = make_session(app="myRCC")
    fake.script("v1/rcc/Extension", moved(301, "https://istra2:8443/restletrouter/v1/rcc/Extension?offset=0"),
                reply(200, {"items": []}))
    session.request_json("GET", "v1/rcc/Extension", params={"offset": 0})
    session.request_json("GET", "v1/rcc/CallLine")
    assert [r.url for r in fake.sent[1:]] == [
        f"{BASE_URL}/v1/rcc/Extension?offset=0",
        "https://istra2:8443/restletrouter/v1/rcc/Extension?offset=0",
        "https://istra2:8443/restletrouter/v1/rcc/CallLine",  # straight there
    ]
    assert session.account.redirected_base_url == "https://istra2:8443/restletrouter"
    assert session.ws_url() == "wss://istra2:8443/restletrouter/ws-service/myRCC"


@pytest.mark.parametrize("status", [302, 307])
def test_it_follows_a_temporary_redirect_without_remembering_it(status):
    session, fake = make_session(app="myRCC")
    fake.script("v1/rcc/Extension", moved(status, "http://istra2/restletrouter/v1/rcc/Extension"))
    session.request("GET", "v1/rcc/Extension")
    session.request("GET", "v1/rcc/CallLine")
    assert fake.sent[-1].url == f"{BASE_URL}/v1/rcc/CallLine"
    assert session.ws_url() == "ws://istra1/restletrouter/ws-service/myRCC"
    assert not getattr(session.account, "redirected_base_url", "")


def test_it_remembers_a_permanent_redirect_only_up_to_a_temporary_one():
    session, fake = make_session(app="myRCC")
    fake.script("v1/rcc/CallLine", moved(308, "http://istra2/restletrouter/v1/rcc/CallLine"),
                moved(302, "http://istra3/restletrouter/v1/rcc/CallLine"), reply())  # istra2 lends it to istra3
    session.request("GET", "v1/rcc/CallLine")
    assert [r.url.split("/restletrouter")[0] for r in fake.sent[1:]] == ["http://istra1", "http://istra2",
                                                                         "http://istra3"]
    assert session.base_url == "http://istra2/restletrouter/"


@pytest.mark.parametrize(("base_url", "request_url", "location", "expected"), [
    ("https://a/restletrouter/", "https://a/restletrouter/v1/rcc/Extension?x=1",
     "https://b/restletrouter/v1/rcc/Extension?x=1", "https://b/restletrouter/"),
    ("https://a/restletrouter/", "https://a/restletrouter/v1/rcc/Extension", "https://b/other/place",
     "https://b/restletrouter/"),  # a Location of another layout moves only the host
    ("https://a/restletrouter/", "https://a/restletrouter/v1/service/Login", "http://b/restletrouter/v1/service/Login",
     None),  # never remember a move to plain http
    ("https://a/restletrouter/", "https://elsewhere/v1/x", "https://b/v1/x", None),  # not a request of the base
])
def test_it_reads_the_new_base_url_from_the_location(base_url, request_url, location, expected):
    assert istra_session.moved_base_url(base_url, request_url, location) == expected


@pytest.mark.parametrize(("ws_url", "expected"), [
    ("ws://istra1/restletrouter/ws-service/myRCC?x=1", "ws://istra2/restletrouter/ws-service/myRCC?x=1"),
    ("wss://events.example/ws", "wss://events.example/ws"),  # another host was not said to move
])
def test_it_moves_a_websocket_override_on_the_old_host_with_the_account(ws_url, expected):
    session, fake = make_session(app="myRCC", ws_url=ws_url)
    fake.script("v1/service/Login", moved(301, "http://istra2/restletrouter/v1/service/Login"))
    session.login()
    assert session.ws_url() == expected


def test_it_logs_out_and_forgets_the_session():
    session, fake = make_session()
    session.login()
    session.logout()
    assert fake.paths() == ["POST v1/service/Login", "POST v1/service/Logout"]
    assert fake.sent[1].headers["Cookie"] == f"myCrm_SESSIONID={SESSION_ID}"
    assert not session.logged_in


def test_it_logs_out_quietly_when_the_session_is_already_gone():
    session, fake = make_session()
    fake.script("v1/service/Logout", reply(401, {"code": "ROUTER_ERR_401", "message": "session expired"}))
    session.login()
    session.logout()
    assert not session.logged_in
    assert fake.logins == 1  # no login just to log out


@pytest.mark.parametrize(("base_url", "ws_url", "expected"), [
    ("http://istra1/restletrouter", "", "ws://istra1/restletrouter/ws-service/myCrm"),
    ("https://istra1:8443/restletrouter/", "", "wss://istra1:8443/restletrouter/ws-service/myCrm"),
    ("https://istra1/restletrouter", "wss://events.example/ws", "wss://events.example/ws"),
])
def test_it_derives_the_websocket_url_unless_the_account_overrides_it(base_url, ws_url, expected):
    session, _ = make_session(base_url=base_url, ws_url=ws_url)
    assert session.ws_url() == expected


def test_it_opens_the_websocket_with_the_session_cookie():
    session, _ = make_session()
    session.login()
    assert f"Cookie: myCrm_SESSIONID={SESSION_ID}" in session.ws_headers()


PEM = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----"


def test_it_verifies_tls_against_the_system_cas_plus_the_accounts_bundle():
    assert trust_store("") is True
    path = trust_store(PEM)
    content = Path(path).read_text()
    assert PEM in content
    assert Path(certifi.where()).read_text().strip()[:200] in content
    assert trust_store(PEM) == path  # one file per bundle, not one per connection


def test_it_hands_the_bundle_to_the_websocket_too():
    session = IstraSession(make_account(ca_bundle=PEM), "myCrm", "ENDUSER:x")
    assert session.http.session.verify == trust_store(PEM)
    assert session.ws_sslopt() == {"ca_certs": trust_store(PEM)}


def test_it_refuses_a_bundle_that_is_not_pem():
    with pytest.raises(ProviderError) as refused:
        trust_store("not a certificate")
    assert refused.value.permanent


def test_it_leaves_open_a_client_it_was_given_and_closes_one_it_made(monkeypatch):
    # The supervisor's sockets share one client an account (issue 19): a listener closing must not close it.
    closed = []
    monkeypatch.setattr(HttpClient, "close", lambda client: closed.append(client.name))
    given, _ = make_session()
    given.close()
    made = IstraSession(make_account(), "myCrm", "ENDUSER:x")
    made.close()
    assert closed == ["istra.myCrm"]
