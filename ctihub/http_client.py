"""The one layer every outbound HTTP call goes through (PBXs and retailCRM).

It gives every request connect and read timeouts, retries what is safe to
retry, follows redirects without turning a POST into a GET (myRCC may move a
request to another host with 301/302, and ``requests`` would silently replay a
POST as a GET) and lists them in the answer's ``history`` as ``requests`` does,
asks for gzip, and logs one line per request with secrets masked. Tests
replace the transport at this one place (``HttpClient.adapter``).

What ``requests`` takes from the environment (``HTTP(S)_PROXY``/``NO_PROXY``,
``~/.netrc``, ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` for the default trust store) is
read once per host here, not by ``requests`` on every request: that walked the whole
environment twice per request, the largest single cost of makeCallUrl's PBX request
(issue 16). A change to those variables counts for the hosts a client has not yet met.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import time
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from requests.hooks import dispatch_hook
from requests.structures import CaseInsensitiveDict
from urllib3 import HTTPHeaderDict

logger = logging.getLogger("ctihub.http")

MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
SECRET_HEADERS = {"authorization", "cookie", "x-api-key", "x-application", "set-cookie"}
_SECRET_QUERY = re.compile(r"((?:apiKey|api_key|token|clientId|password)=)[^&]+", re.I)
# What _send_prepared takes; anything else goes through requests.Session.request as before.
LEAN_ARGUMENTS = frozenset({"headers", "params", "data", "json", "auth", "timeout", "verify", "stream", "proxies",
                            "allow_redirects"})
# Hosts whose environment settings a client keeps (retailCRM's client meets one host per shop).
MAX_HOSTS_REMEMBERED = 256


class HttpError(Exception):
    """The request never got an HTTP answer (timeout, refused connection, TLS failure)."""


def mask_url(url: str) -> str:
    return _SECRET_QUERY.sub(r"\1***", url)


def mask_headers(headers) -> dict:
    return {k: ("***" if k.lower() in SECRET_HEADERS else v) for k, v in dict(headers or {}).items()}


class HttpClient:
    """A requests.Session with the project's timeouts, redirects, retries and logging."""

    def __init__(
        self,
        name: str,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        verify: bool | str = True,
        get_retries: int = 2,
        adapter: HTTPAdapter | None = None,
    ):
        self.name = name
        self.timeout = (
            connect_timeout if connect_timeout is not None else settings.HTTP_CONNECT_TIMEOUT,
            read_timeout if read_timeout is not None else settings.HTTP_READ_TIMEOUT,
        )
        self.get_retries = get_retries
        self.session = requests.Session()
        self.session.trust_env = False  # the environment is read once per host: _environment_for
        self._environment: dict[tuple[str, str], tuple[dict, object]] = {}
        if verify is True:
            # What requests would use instead of its own bundle (trust_env): read once here.
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.session.verify = verify
        self.session.headers["Accept-Encoding"] = "gzip, deflate"
        self.session.headers["User-Agent"] = "ctihub/1.0"
        self.adapter = adapter or HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        self.session.mount("http://", self.adapter)
        self.session.mount("https://", self.adapter)

    def request(self, method: str, url: str, **kwargs) -> requests.Response:
        """Send, following redirects with the same method and body; retry idempotent requests."""
        attempts = 1 + (self.get_retries if method.upper() in ("GET", "HEAD", "DELETE", "PUT") else 0)
        for attempt in range(1, attempts + 1):
            try:
                return self._send_following_redirects(method, url, **kwargs)
            except HttpError:
                if attempt == attempts:
                    raise
                time.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

    def _send_following_redirects(self, method: str, url: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        # Passed explicitly: requests lets REQUESTS_CA_BUNDLE override a session's own trust store.
        kwargs.setdefault("verify", self.session.verify)
        kwargs["allow_redirects"] = False
        history: list[requests.Response] = []
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send_once(method, url, **kwargs)
            if response.status_code not in REDIRECT_STATUSES or "Location" not in response.headers:
                # As requests does: the redirects that led here, oldest first (a caller may remember a 301).
                response.history = history
                return response
            history.append(response)
            response.close()  # its body is not read: give the connection back to the pool
            url = urljoin(url, response.headers["Location"])
            # The Location is the whole new URI, query included (myRCC §3.5): the params are in it already.
            kwargs.pop("params", None)
            logger.info("%s %s redirected (%s) to %s", self.name, method, response.status_code, mask_url(url))
        raise HttpError(f"{self.name}: more than {MAX_REDIRECTS} redirects from {mask_url(url)}")

    def _environment_for(self, url: str) -> tuple[dict, object]:
        """The proxies and netrc credentials requests would take from the environment for ``url``'s host."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        found = self._environment.get(key)
        if found is None:
            if len(self._environment) >= MAX_HOSTS_REMEMBERED:
                self._environment.clear()
            found = self._environment[key] = (
                requests.utils.get_environ_proxies(url), requests.utils.get_netrc_auth(url))
        return found

    def _send_once(self, method: str, url: str, **kwargs) -> requests.Response:
        proxies, netrc_auth = self._environment_for(url)
        if proxies:
            kwargs["proxies"] = {**proxies, **(kwargs.get("proxies") or {})}
        if netrc_auth and not kwargs.get("auth") and not self.session.auth:
            kwargs["auth"] = netrc_auth
        started = time.monotonic()
        try:
            if LEAN_ARGUMENTS.issuperset(kwargs):
                response = self._send_prepared(method, url, **kwargs)
            else:
                response = self.session.request(method, url, **kwargs)
        except requests.RequestException as exc:
            elapsed_ms = (time.monotonic() - started) * 1000
            logger.warning(
                "%s %s %s failed after %.0f ms: %s", self.name, method, mask_url(url), elapsed_ms,
                exc.__class__.__name__,
            )
            raise HttpError(f"{self.name}: {method} {urlsplit(url).netloc} failed: {exc.__class__.__name__}") from exc
        if logger.isEnabledFor(logging.INFO):  # masking the URL costs more than the rest of the line
            elapsed_ms = (time.monotonic() - started) * 1000
            logger.info("%s %s %s -> %s in %.0f ms", self.name, method, mask_url(url), response.status_code,
                        elapsed_ms)
        return response

    def _send_prepared(self, method: str, url: str, *, headers=None, params=None, data=None, json=None, auth=None,
                       timeout=None, verify=None, stream=False, proxies=None, allow_redirects=False) -> requests.Response:
        """What ``Session.request`` does for one request without redirects, in fewer steps.

        The same request and answer: the session's headers under the request's own (a ``None`` value drops
        one), its cookie jar sent and updated, its auth and hooks, the client's adapter. ``Session.request``
        built a Request, merged every setting through generic helpers, copied the cookie jar twice and
        looked at the environment; on a PBX request that was a fifth of its CPU (issue 16).
        """
        assert not allow_redirects  # _send_following_redirects follows them itself
        merged = CaseInsensitiveDict(self.session.headers)
        if headers:
            merged.update(headers)
            for name in [name for name, value in merged.items() if value is None]:
                del merged[name]
        prepared = requests.PreparedRequest()
        prepared.prepare(method=method.upper(), url=url, headers=merged, data=data or {}, json=json,
                         params=params or {}, auth=auth or self.session.auth, cookies=self.session.cookies,
                         hooks=self.session.hooks)
        started = time.perf_counter()
        response = self.adapter.send(prepared, stream=bool(stream), timeout=timeout,
                                     verify=self.session.verify if verify is None else verify,
                                     cert=self.session.cert, proxies={**self.session.proxies, **(proxies or {})})
        response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
        response = dispatch_hook("response", prepared.hooks, response)
        if response.raw is not None and _may_set_cookies(response.raw):
            extract_cookies_to_jar(self.session.cookies, prepared, response.raw)
        if not stream:
            response.content  # noqa: B018 - read the body now, as requests does, so the connection goes back
        return response

    def close(self) -> None:
        self.session.close()



def _may_set_cookies(raw) -> bool:
    """False when an answer has no Set-Cookie header (the jar would stay as it is); urllib3's headers only."""
    headers = getattr(raw, "headers", None)
    if not isinstance(headers, HTTPHeaderDict):
        return True
    return "set-cookie" in headers or "set-cookie2" in headers
