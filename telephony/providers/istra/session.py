"""A logged-in session on a Centile Istra server, shared by myCrm, myRCC and myIstra.

All three APIs log in the same way (``POST v1/service/Login`` with Basic auth and
``X-Application: <app>``) and then want, on every request, the session cookie
``<app>_SESSIONID`` and ``X-Application: <app>;<token>``. This module keeps that
state, renews it when Istra forgets the session, and turns Istra's error
answers into ``ProviderError`` messages an admin can act on.

Decisions the documents leave open (see /work/shared/specs/README.md):

* The token is re-read from every response, not only from the login, because
  myIstra warns it may rotate.
* The cookie is sent as an explicit ``Cookie`` header instead of through the
  ``requests`` cookie jar, so it survives a myRCC redirect to another host (the
  jar would only send it back to the host that set it).
* A 401 (or 403 ROUTER_ERR_400) on an established session means the session
  expired: log in again and retry the request once.
* A refused login (401 on Login) is remembered on the account, for every
  process: Istra suspends an account after "too many failures in a row"
  (myIstra doc, "Istra Password Policy"), and the listener, the history
  backfill, the voicemail views, recordUrl checks, caller-ID and myRCC line
  pulls would otherwise each keep trying the same refused password. Until an
  admin saves the account or ``ISTRA_LOGIN_COOLDOWN_SECONDS`` pass, no login
  with those credentials is sent: ``LoginHeld`` (permanent) says why and until
  when. After the cool-down one process (not each) tries once again.
* A permanent redirect (301/308, myRCC §3.5: "requests may in future versions
  be redirected permanently ... to an alternative host") moves the account's
  base URL, and so its websocket, to the new host for every later session of
  the account in every process (``PbxAccount.redirected_base_url``); the path
  below the host keeps its layout. A 302/307 is followed, not remembered. A
  move from https to http is never followed (``ctihub.lib.http_client``): the
  login's credentials, the cookie and the token would go in clear.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import re
import threading
from datetime import timedelta
from http.cookiejar import DefaultCookiePolicy
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from ctihub.lib.http_client import HttpClient, HttpError
from telephony.models import PbxAccount
from telephony.providers.base import (
    EventStream,
    ProviderError,
    SessionExpired,
    WebSocketStream,
    run_database,
    trust_store,
)
from telephony.providers.istra.errors import LoginHeld, error_from_response, session_lost

logger = logging.getLogger(__name__)

LOGIN_PATH = "v1/service/Login"
LOGOUT_PATH = "v1/service/Logout"
LISTENER_PATH = "v1/service/EventListener/bean"

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
PERMANENT_REDIRECTS = (301, 308)


def enduser_username(login: str) -> str:
    """myCrm and myIstra log in as an end user."""
    return f"ENDUSER:{login}"


def rcc_username(login: str, enterprise: str) -> str:
    """myRCC logs in as an RCC administrator of one enterprise ("login|name enterprise")."""
    return f"{login}|{enterprise}"


class IstraSession:
    """One Istra session for one account and one application (``myCrm``, ``myRCC``, ``myIstra``).

    Safe to share between threads: logging in is serialised, and a thread that
    finds the session expired only logs in again if nobody did it meanwhile.
    """

    def __init__(self, account, app: str, username: str, http: HttpClient | None = None):
        self.account = account
        self.app = app
        self.username = username
        #: Where requests go: the account's base URL, or where the PBX said it moved permanently.
        self.base_url = _with_slash(getattr(account, "redirected_base_url", "") or account.base_url)
        #: A client given is the caller's (shared by many sessions): only one made here is closed here.
        self._owns_http = http is None
        self.http = http or HttpClient(f"istra.{app}", verify=trust_store(account.ca_bundle))
        _ignore_cookie_jar(self.http)
        self._http_without_retries: HttpClient | None = None
        self._lock = threading.Lock()
        self._token: str | None = None
        self._session_id: str | None = None

    # --- state ----------------------------------------------------------------------
    @property
    def logged_in(self) -> bool:
        return self._token is not None

    @property
    def cookie_name(self) -> str:
        return f"{self.app}_SESSIONID"

    def cookie_header(self) -> str:
        return f"{self.cookie_name}={self._session_id}"

    # --- login and logout ---------------------------------------------------------------
    def login(self) -> None:
        """Open a new session (replacing the current one, if any)."""
        with self._lock:
            self._login_locked()

    def ensure_logged_in(self) -> None:
        with self._lock:
            if self._token is None:
                self._login_locked()

    def logout(self) -> None:
        """Close the session at the PBX; best effort, since the session may already be gone."""
        if not self.logged_in:
            return
        try:
            self.request("POST", LOGOUT_PATH, relogin=False)
        except ProviderError as exc:
            logger.info("%s logout failed (%s); forgetting the session anyway", self.app, exc)
        finally:
            self._token = self._session_id = None

    def close(self) -> None:
        self.logout()
        if self._owns_http:  # the retry-less copy shares its adapter (a borrowed client's): left with it
            self.http.close()
            if self._http_without_retries is not None:
                self._http_without_retries.close()

    def _login_locked(self) -> None:
        # Every login of every Istra API comes through here: the one place that holds a refused one.
        shared = self._shared_state()
        if shared is not None:
            self._follow_remembered_redirect(shared["redirected_base_url"])
            self._hold_if_refused(shared)
        headers = {
            **JSON_HEADERS,
            "X-Application": self.app,
            "Authorization": _basic_authorization(self.username, self.account.password),
        }
        response = self._send(self.http, "POST", LOGIN_PATH, headers=headers)
        if response.status_code >= 400:
            error = error_from_response(response, self.app, f"login as {self.username!r}", during_login=True)
            if response.status_code == 401:
                self._remember_refusal(error)
            raise error
        token = _token_from(response, self.app)
        session_id = _session_id_from(response, self.cookie_name)
        if not token or not session_id:
            raise ProviderError(
                f"Istra {self.app} accepted the login of {self.username!r} but sent no "
                f"{'token (X-Application header)' if not token else self.cookie_name + ' cookie'}",
                status=response.status_code,
            )
        self._token, self._session_id = token, session_id
        logger.info("%s logged in to %s as %s", self.app, urlsplit(self.base_url).netloc, self.username)
        if shared is not None and shared["login_refused_at"] is not None:
            self._forget_refusal()

    # --- what every process knows of the account: a refused login, a permanent redirect -----------
    @property
    def _stored(self) -> bool:
        """A saved PbxAccount (unit tests hand the session a plain object, with nothing to share)."""
        return isinstance(self.account, PbxAccount) and self.account.pk is not None

    @property
    def _credentials(self) -> str:
        """A keyed hash of the user name and password: which credentials a refusal is about."""
        secret = settings.SECRET_KEY.encode("utf-8")
        message = f"{self.username}\n{self.account.password}".encode()
        return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]

    def _shared_state(self) -> dict | None:
        """The account's refusal marker and remembered redirect as stored now, or None (not stored, no database)."""
        if not self._stored:
            return None
        try:
            return run_database(lambda: PbxAccount.objects.filter(pk=self.account.pk).values(
                "login_refused_at", "login_refused_reason", "login_refused_credentials", "redirected_base_url",
            ).first())
        except DatabaseError as exc:  # one login too many is better than no socket during a database outage
            logger.warning("%s cannot read the account's login refusal (%s); logging in anyway", self.app, exc,
                           extra={"account_id": self.account.pk})
            return None

    def _hold_if_refused(self, shared: dict) -> None:
        """Raise LoginHeld while these credentials' refusal holds; past the cool-down, let one process try."""
        refused_at = shared["login_refused_at"]
        if refused_at is None or shared["login_refused_credentials"] not in ("", self._credentials):
            return
        until = refused_at + timedelta(seconds=settings.ISTRA_LOGIN_COOLDOWN_SECONDS)
        now = timezone.now()
        if now >= until:
            if self._claim_retry(refused_at, now):
                logger.info("%s: the cool-down after a refused login is over; trying once more", self.app,
                            extra={"account_id": self.account.pk})
                return
            hold = "another process is trying it once more right now"
        else:
            hold = (f"nothing logs in with it until an admin saves the account (with the right password) or until "
                    f"{_when(until)} (ISTRA_LOGIN_COOLDOWN_SECONDS)")
        raise LoginHeld(
            f"Istra {self.app}: no login sent as {self.username!r}: it was refused at {_when(refused_at)} "
            f"({shared['login_refused_reason'] or 'HTTP 401'}). Istra suspends an account after too many failed "
            f"logins in a row, so {hold}."
        )

    def _claim_retry(self, refused_at, now) -> bool:
        # Only the process that moves the marker's time tries; the others see a fresh refusal time.
        try:
            return PbxAccount.objects.filter(pk=self.account.pk, login_refused_at=refused_at).update(
                login_refused_at=now) == 1
        except DatabaseError:
            return True  # the cool-down is over anyway

    def _remember_refusal(self, error: ProviderError) -> None:
        if not self._stored:
            return
        until = timezone.now() + timedelta(seconds=settings.ISTRA_LOGIN_COOLDOWN_SECONDS)
        logger.warning("%s refused the login as %s: no login with this account until it is saved in the admin "
                       "or until %s", self.app, self.username, _when(until), extra={"account_id": self.account.pk})
        try:
            PbxAccount.objects.filter(pk=self.account.pk).update(
                login_refused_at=timezone.now(), login_refused_reason=str(error)[:1000],
                login_refused_credentials=self._credentials,
            )
        except DatabaseError as exc:
            logger.warning("%s cannot note the refused login (%s)", self.app, exc,
                           extra={"account_id": self.account.pk})

    def _forget_refusal(self) -> None:
        """A login worked: Istra's run of failures is broken, and the admin page says the account works."""
        try:
            PbxAccount.objects.filter(pk=self.account.pk).update(
                login_refused_at=None, login_refused_reason="", login_refused_credentials="")
        except DatabaseError as exc:
            logger.warning("%s cannot clear the refused-login note (%s)", self.app, exc,
                           extra={"account_id": self.account.pk})

    def _follow_remembered_redirect(self, redirected_base_url: str) -> None:
        """Another session (maybe another process) learnt or forgot a permanent redirect: go where it says."""
        base_url = _with_slash(redirected_base_url or self.account.base_url)
        if base_url != self.base_url:
            logger.info("%s: this account's requests now go to %s", self.app, urlsplit(base_url).netloc)
            self.base_url = base_url

    def _note_redirects(self, url: str, response: requests.Response) -> None:
        """Remember where a permanent redirect of a request under the base URL sent it."""
        moved_to = None
        for hop in getattr(response, "history", None) or ():
            if hop.status_code not in PERMANENT_REDIRECTS:
                break  # what follows a temporary redirect is not where this account lives
            moved_to = urljoin(hop.url or url, hop.headers.get("Location", ""))
        if moved_to is None:
            return
        base_url = moved_base_url(self.base_url, url, moved_to)
        if base_url is None or base_url == self.base_url:
            return
        logger.warning("%s: %s moved permanently to %s; every later request and the websocket go there", self.app,
                       urlsplit(self.base_url).netloc, urlsplit(base_url).netloc,
                       extra={"account_id": getattr(self.account, "pk", None)})
        self.base_url = base_url
        stored = "" if base_url == _with_slash(self.account.base_url) else base_url.rstrip("/")
        self.account.redirected_base_url = stored  # sessions built later from this very object
        if not self._stored:
            return
        try:
            PbxAccount.objects.filter(pk=self.account.pk).update(
                redirected_base_url=stored, redirected_at=timezone.now() if stored else None)
        except DatabaseError as exc:
            logger.warning("%s cannot remember the redirect (%s)", self.app, exc, extra={"account_id": self.account.pk})

    def _login_again(self, stale_token: str | None) -> None:
        with self._lock:
            if self._token == stale_token:  # nobody renewed it while we waited for the lock
                self._login_locked()

    # --- requests -------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        body: dict | str | None = None,
        relogin: bool = True,
        retry_on_timeout: bool = True,
    ) -> requests.Response:
        """Send on the session and return a 2xx answer, or raise ``ProviderError``.

        ``relogin=False`` turns an expired session into ``SessionExpired`` instead
        of a new login: a listener must stay on the session its websocket has.
        ``retry_on_timeout=False`` is for GETs that act (myCrm PlaceCall), which
        must not be sent twice because an answer was slow.
        """
        self.ensure_logged_in()
        token_used = self._token
        response = self._send_on_session(method, path, params, body, retry_on_timeout)
        if session_lost(response):
            if not relogin:
                raise error_from_response(response, self.app, f"{method} {path}")
            logger.info("%s session expired (HTTP %s); logging in again", self.app, response.status_code)
            self._login_again(token_used)
            response = self._send_on_session(method, path, params, body, retry_on_timeout)
        if response.status_code >= 400:
            raise error_from_response(response, self.app, f"{method} {path}")
        return response

    def request_json(self, method: str, path: str, **kwargs):
        """``request`` and the answer's JSON (None for an empty answer such as 204)."""
        response = self.request(method, path, **kwargs)
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            raise ProviderError(
                f"Istra {self.app} answered {method} {path} with something that is not JSON",
                status=response.status_code,
            ) from None

    def check_alive(self, path: str, params: dict | None = None) -> None:
        """One cheap GET on this very session: SessionExpired if the PBX has forgotten it.

        A listener's session check (``EventStream.session_check``). Istra expires a session after a
        delay without requests, and websocket pings are not requests, so this GET is also what keeps
        the session of a quiet socket alive. Never logs in: a new session would not be the one the
        socket is bound to. Sent once (no retry after a timeout): the next check comes soon enough.
        """
        if not self.logged_in:  # closed by its listener meanwhile
            raise SessionExpired(f"Istra {self.app} session is closed")
        # Not through request(): a listener closing meanwhile logs out, and request() would log in again.
        response = self._send_on_session("GET", path, params, None, retry_on_timeout=False)
        if response.status_code >= 400:
            raise error_from_response(response, self.app, f"GET {path}")

    def url(self, path: str) -> str:
        """``path`` relative to base_url (as Istra's restUri and next links are), or absolute."""
        return _joined(self.base_url, path)

    def _send_on_session(self, method, path, params, body, retry_on_timeout) -> requests.Response:
        session_id = self._session_id
        headers = {**JSON_HEADERS, "X-Application": f"{self.app};{self._token}", "Cookie": self.cookie_header()}
        http = self.http if retry_on_timeout or method.upper() != "GET" else self._http_once()
        response = self._send(http, method, path, headers=headers, params=params, body=body)
        self._remember_rotated_credentials(response, session_id)
        return response

    def _send(self, http: HttpClient, method: str, path: str, *, headers: dict, params=None, body=None):
        data = json.dumps(body) if isinstance(body, dict) else body
        url = self.url(path)
        try:
            response = http.request(
                method, url, headers=headers, params=params,
                data=data.encode("utf-8") if data is not None else None,
            )
        except HttpError as exc:
            raise ProviderError(f"cannot reach the Istra server: {exc}") from exc
        self._note_redirects(url, response)
        return response

    def _remember_rotated_credentials(self, response: requests.Response, session_id_sent: str | None) -> None:
        # Only an answer on the current session may rotate it: a slow answer from a
        # session replaced meanwhile must not bring back its stale token.
        if session_id_sent != self._session_id:
            return
        token = _token_from(response, self.app)
        session_id = _session_id_from(response, self.cookie_name)
        if token and token != self._token:
            logger.info("%s rotated its session token", self.app)
            self._token = token
        if session_id:
            self._session_id = session_id

    def _http_once(self) -> HttpClient:
        """The same transport without the retry HttpClient gives every GET."""
        if self._http_without_retries is None:
            with self._lock:  # requests share the session concurrently: build it once
                if self._http_without_retries is None:
                    connect_timeout, read_timeout = self.http.timeout
                    once = HttpClient(
                        f"{self.http.name}.once", connect_timeout=connect_timeout, read_timeout=read_timeout,
                        verify=self.http.session.verify, get_retries=0, adapter=self.http.adapter,
                    )
                    _ignore_cookie_jar(once)
                    self._http_without_retries = once
        return self._http_without_retries

    # --- event listeners and the websocket ----------------------------------------------------
    def ws_url(self, app: str | None = None) -> str:
        """The account's override, else ws(s)://HOST/restletrouter/ws-service/<app>.

        Both follow a remembered permanent redirect: the derived URL is built on the current base URL,
        and an override on the base URL's own host moves to the new host (one on another host stays).
        """
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        if self.account.ws_url:
            override, configured_host = urlsplit(self.account.ws_url), urlsplit(self.account.base_url).netloc
            if override.netloc != configured_host or parts.netloc == configured_host:
                return self.account.ws_url
            return urlunsplit((scheme, parts.netloc, override.path, override.query, ""))
        return urlunsplit((scheme, parts.netloc, f"{parts.path.rstrip('/')}/ws-service/{app or self.app}", "", ""))

    def ws_headers(self) -> list[str]:
        return [f"Cookie: {self.cookie_header()}", f"X-Application: {self.app};{self._token}"]

    def ws_sslopt(self) -> dict:
        verify = self.http.session.verify
        return {"ca_certs": verify} if isinstance(verify, str) else {}

    def open_websocket(self) -> WebSocketStream:
        """The websocket of the current login (Istra ties it to the session cookie)."""
        self.ensure_logged_in()
        return WebSocketStream.connect(
            self.ws_url(), headers=self.ws_headers(), timeout=self.http.timeout[1], sslopt=self.ws_sslopt(),
        )

    def open_listener(
        self, name: str, listener_body: dict | str, bind_path: str, bind_params: dict
    ) -> tuple[WebSocketStream, requests.Response]:
        """Log in afresh, open the websocket, create listener ``name`` and bind it with a GET.

        Returns the socket and the bind answer (myRCC's lists the current call
        lines). Nothing here logs in again: the listener must be bound from the
        session the websocket belongs to, so an expired session is an error the
        caller retries from the start. On failure the socket is closed and the
        session logged out, but the listener is not deleted: the docs never say
        whether it is the session's or the user's, and if the user's, another
        worker's socket may be bound to it (a handover under way); a session's
        goes with the logout, a user's is created again by the next try.
        """
        self.login()
        stream = self.open_websocket()
        try:
            self._create_listener(name, listener_body)
            answer = self.request("GET", bind_path, params=bind_params, relogin=False)
        except BaseException:
            stream.close()
            self.logout()
            raise
        return stream, answer

    def _create_listener(self, name: str, listener_body: dict | str) -> None:
        """Create listener ``name``; a refusal that may mean "it exists" (a 4xx other than 401) is let through.

        A handover's taker creates the name the owner's socket still listens under. If the PBX's listeners are
        the user's rather than the session's, and it refuses a name that exists rather than replacing it (the
        docs say neither), the listener the taker needs is there: the bind says whether it is.
        """
        try:
            self.request("POST", LISTENER_PATH, body=listener_body, relogin=False)
        except ProviderError as exc:
            if isinstance(exc, SessionExpired) or exc.status is None or not 400 <= exc.status < 500 \
                    or exc.status == 401:
                raise
            logger.info("%s refused to create listener %s (%s); binding it anyway, in case it exists",
                        self.app, name, exc)

    def close_listener(self, name: str, stream: EventStream | None, *, keep_listener: bool = False) -> None:
        """Delete the listener (best effort: it dies with its session anyway) and close the socket.

        ``keep_listener``: close the socket only. A listener handed over to another worker keeps its name, and
        the Istra docs never say whether a listener is its session's or shared by the user's sessions; if
        shared, deleting it here would end the new owner's (docs/architecture.md, "Listeners across workers").
        """
        if stream is None:
            return
        try:
            if not keep_listener:
                self.delete_listener(name)
        finally:
            stream.close()

    def delete_listener(self, name: str) -> None:
        try:
            self.request("DELETE", f"{LISTENER_PATH}/{name}", relogin=False)
        except ProviderError as exc:
            logger.info("%s could not delete listener %s: %s", self.app, name, exc)


# --- redirects and times -------------------------------------------------------------------------

@functools.lru_cache(maxsize=1024)
def _joined(base_url: str, path: str) -> str:
    """``urljoin``, kept per base and path: a PBX request's URL is one of a few (issue 16: 6% of placeCall)."""
    return urljoin(base_url, path)


def _with_slash(base_url: str) -> str:
    return base_url.rstrip("/") + "/"


def moved_base_url(base_url: str, request_url: str, moved_to: str) -> str | None:
    """The base URL a permanent redirect of ``request_url`` to ``moved_to`` means, or None.

    The path below the base keeps its layout: ``https://a/restletrouter/v1/rcc/Extension`` moved to
    ``https://b/rr/v1/rcc/Extension`` means the base ``https://b/rr/``; a Location whose path does
    not end the same way moves only the host. None for a request outside the base URL and for a
    move from https to http (the HTTP layer does not follow one either).
    """
    base, request, target = urlsplit(base_url), urlsplit(request_url), urlsplit(moved_to)
    if not target.netloc or request.netloc != base.netloc or not request.path.startswith(base.path):
        return None
    if base.scheme == "https" and target.scheme != "https":
        return None
    below = request.path[len(base.path):]
    path = target.path[: len(target.path) - len(below)] if below and target.path.endswith(below) else base.path
    return _with_slash(urlunsplit((target.scheme, target.netloc, path, "", "")))


def _when(moment) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")


# --- Istra's answers --------------------------------------------------------------------------

def _basic_authorization(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _token_from(response: requests.Response, app: str) -> str | None:
    """The token in ``X-Application: <app>;<token>``, if this answer carries one."""
    for value in response.headers.get("X-Application", "").split(","):
        name, _, token = value.partition(";")
        if name.strip().lower() == app.lower() and token.strip():
            return token.strip()
    return None


def _session_id_from(response: requests.Response, cookie_name: str) -> str | None:
    pattern = re.compile(rf"(?:^|[;,]\s*){re.escape(cookie_name)}=([^;,\s]+)", re.IGNORECASE)
    for header in _set_cookie_headers(response):
        match = pattern.search(header)
        if match:
            return match.group(1)
    return None


def _set_cookie_headers(response: requests.Response) -> list[str]:
    # requests joins repeated Set-Cookie headers with commas, which Expires dates
    # also contain; urllib3 still has them one by one.
    raw_headers = getattr(response.raw, "headers", None)
    if raw_headers is not None and hasattr(raw_headers, "getlist"):
        return raw_headers.getlist("Set-Cookie")
    value = response.headers.get("Set-Cookie")
    return [value] if value else []


def _ignore_cookie_jar(http: HttpClient) -> None:
    # The session cookie travels in our explicit Cookie header only; a jar copy
    # would be sent alongside it on login (a stale session) and not to a redirect host.
    http.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
