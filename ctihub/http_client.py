"""The one layer every outbound HTTP call goes through (PBXs and retailCRM).

It gives every request connect and read timeouts, retries what is safe to
retry, follows redirects without turning a POST into a GET (myRCC may move a
request to another host with 301/302, and ``requests`` would silently replay a
POST as a GET) and lists them in the answer's ``history`` as ``requests`` does,
asks for gzip, and logs one line per request with secrets masked. Tests
replace the transport at this one place (``HttpClient.adapter``).
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

logger = logging.getLogger("ctihub.http")

MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
SECRET_HEADERS = {"authorization", "cookie", "x-api-key", "x-application", "set-cookie"}
_SECRET_QUERY = re.compile(r"((?:apiKey|api_key|token|clientId|password)=)[^&]+", re.I)


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

    def _send_once(self, method: str, url: str, **kwargs) -> requests.Response:
        started = time.monotonic()
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.RequestException as exc:
            elapsed_ms = (time.monotonic() - started) * 1000
            logger.warning(
                "%s %s %s failed after %.0f ms: %s", self.name, method, mask_url(url), elapsed_ms,
                exc.__class__.__name__,
            )
            raise HttpError(f"{self.name}: {method} {urlsplit(url).netloc} failed: {exc.__class__.__name__}") from exc
        elapsed_ms = (time.monotonic() - started) * 1000
        logger.info("%s %s %s -> %s in %.0f ms", self.name, method, mask_url(url), response.status_code, elapsed_ms)
        return response

    def close(self) -> None:
        self.session.close()
