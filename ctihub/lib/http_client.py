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

The usual request (no proxy, no client certificate, not streamed, a body in bytes if any, the client's own
``HTTPAdapter`` not replaced) is prepared by requests as always and sent on a kept-alive
``http.client`` connection of the client's own (``_KeptAlive``), not through requests' adapter
and urllib3's pool: those were over half of a PBX request's CPU (issue 16), ~0.3 ms of every
makeCallUrl click. The answer is the same ``requests.Response`` (headers folded as requests folds
them, ``raw.headers`` one by one, body decoded, cookies in the jar and the answer); failures are
requests' own exceptions (``ConnectTimeout``, ``ReadTimeout``, ``SSLError``, ``ConnectionError``).
Anything else, and every client given an adapter (the tests' seam), goes through the adapter.
"""

from __future__ import annotations

import datetime
import email.parser
import http.client
import http.cookiejar
import io
import logging
import os
import re
import select
import ssl
import threading
import time
import types
import zlib
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings
from requests._internal_utils import to_native_string
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from requests.hooks import dispatch_hook
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH, check_header_validity, get_encoding_from_headers
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
# Idle kept-alive connections a client keeps per host (as its HTTPAdapter's pool_maxsize).
MAX_IDLE_PER_HOST = 16


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
        self.adapter = adapter or HTTPAdapter(pool_connections=4, pool_maxsize=MAX_IDLE_PER_HOST, max_retries=0)
        self.session.mount("http://", self.adapter)
        self.session.mount("https://", self.adapter)
        # An adapter given is what the caller wants every request to go through (tests replace the transport).
        self._kept_alive = _KeptAlive() if adapter is None else None

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
            moved_to = urljoin(url, response.headers["Location"])
            if urlsplit(url).scheme == "https" and urlsplit(moved_to).scheme != "https":
                # The same headers would go: a Basic login, a session cookie, an API key, in clear.
                raise HttpError(f"{self.name}: {method} {mask_url(url)} was redirected ({response.status_code}) from "
                                f"https to {mask_url(moved_to)}; not followed, it would send the request in clear")
            url = moved_to
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
        merged = _merged_headers(self.session.headers, headers)
        prepared = _Prepared()
        prepared.prepare(method=method.upper(), url=url, headers=merged, data=data or {}, json=json,
                         params=params or {}, auth=auth or self.session.auth, cookies=self.session.cookies,
                         hooks=self.session.hooks)
        verify = self.session.verify if verify is None else verify
        proxies = {**self.session.proxies, **(proxies or {})}
        started = time.perf_counter()
        if self._kept_alive is not None and not stream and not proxies and self.session.cert is None \
                and isinstance(prepared.body, (bytes, type(None))) \
                and self.adapter is self.session.adapters.get("http://") is self.session.adapters.get("https://"):
            response = self._kept_alive.send(prepared, timeout, verify)
            response.connection = self.adapter
        else:
            response = self.adapter.send(prepared, stream=bool(stream), timeout=timeout, verify=verify,
                                         cert=self.session.cert, proxies=proxies)
        response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
        response = dispatch_hook("response", prepared.hooks, response)
        if response.raw is not None and _may_set_cookies(response.raw):
            extract_cookies_to_jar(self.session.cookies, prepared, response.raw)
        if not stream:
            response.content  # noqa: B018 - read the body now, as requests does, so the connection goes back
        return response

    def close(self) -> None:
        self.session.close()
        if self._kept_alive is not None:
            self._kept_alive.close()


_shared: dict[tuple, HttpClient] = {}
_shared_lock = threading.Lock()


def shared_client(name: str, *, verify: bool | str = True) -> HttpClient:
    """One client per ``name`` and trust store for the whole process, its kept-alive connections shared by
    every thread (``HttpClient`` is thread-safe: the connections are lent one request at a time).

    For callers that would otherwise build a client per short-lived object: a listener's socket logs in on a
    session of its own, and building a client for each (a ``requests.Session``, the environment read for the
    host, a new TCP connection) was a quarter of the CPU a worker spent taking a listener over (issue 19).
    Never close it: it is the process's.
    """
    key = (name, verify)
    client = _shared.get(key)
    if client is None:
        with _shared_lock:
            client = _shared.get(key)
            if client is None:
                client = _shared[key] = HttpClient(name, verify=verify)
    return client



def _merged_headers(session_headers, headers) -> CaseInsensitiveDict:
    """``CaseInsensitiveDict(session_headers)`` updated with ``headers``, ``None`` values dropped, as
    ``_send_prepared`` did with the mapping's own methods (a generic ``update`` and ``items``, ~10% of a PBX
    request's CPU, issue 16): the same keys, their spelling (the last one given) and order."""
    merged = CaseInsensitiveDict()
    store = merged._store
    if isinstance(session_headers, CaseInsensitiveDict):
        store.update(session_headers._store)
    else:
        for name, value in session_headers.items():
            store[name.lower()] = (name, value)
    if headers:
        for name, value in (headers._store.values() if isinstance(headers, CaseInsensitiveDict) else headers.items()):
            store[name.lower()] = (name, value)
        for lowered in [lowered for lowered, (_name, value) in store.items() if value is None]:
            del store[lowered]
    return merged


def _folded(pairs) -> CaseInsensitiveDict:
    """``CaseInsensitiveDict(HTTPHeaderDict(pairs))``, as requests folds an answer's headers (a repeated one
    joined with ", " under its first spelling), without the two mappings' generic methods (issue 16)."""
    folded = CaseInsensitiveDict()
    store = folded._store
    for name, value in pairs:
        lowered = name.lower()
        found = store.get(lowered)
        store[lowered] = (found[0], f"{found[1]}, {value}") if found is not None else (name, value)
    return folded


def _may_set_cookies(raw) -> bool:
    """False when an answer has no Set-Cookie header (the jar would stay as it is); urllib3's headers only."""
    headers = getattr(raw, "headers", None)
    if not isinstance(headers, HTTPHeaderDict):
        return True
    return "set-cookie" in headers or "set-cookie2" in headers


_PREPARED_URLS: dict[str, str] = {}
MAX_URLS_REMEMBERED = 1024
# Header (name, value) pairs requests' check_header_validity has passed: the client's own and a PBX
# session's headers are the same on most requests.
_VALID_HEADERS: set[tuple] = set()
MAX_HEADERS_REMEMBERED = 1024


class _Prepared(requests.PreparedRequest):
    """requests' own preparation, with what gives the same answer every time done once or skipped (issue 16:
    ~20% of a PBX request's CPU): the URL step (parsing, IDNA, requoting) remembered per URL when there are
    no params; each header pair's validity check once per pair; no cookie header looked for in an empty
    jar (a PBX session keeps none: its jar refuses them); no credentials looked for in a URL without ``@``.
    """

    def prepare_headers(self, headers) -> None:
        self.headers = CaseInsensitiveDict()
        if headers:
            for header in (headers._store.values() if isinstance(headers, CaseInsensitiveDict) else headers.items()):
                try:
                    known = header in _VALID_HEADERS
                except TypeError:  # not hashable: not a str or bytes value, which the check refuses
                    known = False
                if not known:
                    check_header_validity(header)  # raises InvalidHeader: such a pair is never remembered
                    if len(_VALID_HEADERS) >= MAX_HEADERS_REMEMBERED:
                        _VALID_HEADERS.clear()
                    _VALID_HEADERS.add(header)
                name, value = header
                self.headers[to_native_string(name)] = value

    def prepare_cookies(self, cookies) -> None:
        if isinstance(cookies, http.cookiejar.CookieJar) and next(iter(cookies), None) is None:
            self._cookies = cookies  # what requests keeps; an empty jar adds no Cookie header
            return
        super().prepare_cookies(cookies)

    def prepare_auth(self, auth, url="") -> None:
        if auth is None and "@" not in self.url:
            return  # requests would look for user:password@ in the URL and find none
        super().prepare_auth(auth, url)

    def prepare_url(self, url, params):
        if params or not isinstance(url, str):
            return super().prepare_url(url, params)
        known = _PREPARED_URLS.get(url)
        if known is not None:
            self.url = known
            return None
        super().prepare_url(url, params)
        if len(_PREPARED_URLS) >= MAX_URLS_REMEMBERED:
            _PREPARED_URLS.clear()
        _PREPARED_URLS[url] = self.url
        return None


# A header line as the email package reads one without defects: a name of visible ASCII but ':' (its
# ``headerRE``), a colon, a value without a CR or LF of its own, one line ending.
_PLAIN_HEADER_LINE = re.compile(rb"([\x21-\x39\x3b-\x7e]+):([^\r\n]*)\r?\n")


def _parse_headers(fp, _class=http.client.HTTPMessage):
    """``http.client.parse_headers`` without the ``email`` package for the usual header block.

    ``http.client`` joins the header lines and parses them with ``email``'s feed parser: 17% of a PBX
    request's CPU (issue 16). Plain lines (one ``Name: value`` each) make the same message here: the
    names as sent, the values with the spaces after the colon and the line ending removed, as the feed
    parser's ``compat32`` policy stores them. Anything else (a folded line, a line without a colon, a
    stray CR) goes to ``email`` as before. The same limits on line length and count (``_read_headers``).
    """
    lines = http.client._read_headers(fp)
    message = _class()
    match, add = _PLAIN_HEADER_LINE.fullmatch, message.set_raw
    for line in lines[:-1] if lines[-1] in (b"\r\n", b"\n") else lines:
        plain = match(line)
        if plain is None:
            return email.parser.Parser(_class=_class).parsestr(b"".join(lines).decode("iso-8859-1"))
        add(plain[1].decode("iso-8859-1"), plain[2].decode("iso-8859-1").lstrip(" \t"))
    message._payload = ""
    return message


class _Answer(http.client.HTTPResponse):
    """``http.client``'s own answer, its headers read by ``_parse_headers``: the standard library's ``begin``
    itself (status line, 100 Continue, chunked, lengths, keep-alive), run with that one name replaced."""

    begin = types.FunctionType(http.client.HTTPResponse.begin.__code__,
                               {**vars(http.client), "parse_headers": _parse_headers}, "begin")


class _Connection(http.client.HTTPConnection):
    response_class = _Answer


class _TlsConnection(http.client.HTTPSConnection):
    response_class = _Answer


def _readable(sock) -> bool:
    """Whether an idle connection has something to read (an EOF: the server closed it). ``poll``, not
    ``select``: daphne holds thousands of sockets, and ``select`` refuses a descriptor over 1023."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _RawAnswer:
    """What a ``Response.raw`` is read for here: headers one by one (``getlist("Set-Cookie")``) and the
    ``http.client`` answer requests' cookie extraction reads. The body is already in ``content``."""

    def __init__(self, headers: HTTPHeaderDict, original: http.client.HTTPResponse):
        self.headers = headers
        self._original_response = original
        self.status = original.status
        self.reason = original.reason

    def read(self, *_args, **_kwargs) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _decoded(body: bytes, encoding: str) -> bytes:
    """The body as urllib3 decodes it for requests (we ask for gzip and deflate only)."""
    for coding in reversed([part.strip().lower() for part in encoding.split(",") if part.strip()]):
        try:
            if coding in ("gzip", "x-gzip"):
                decompressor, out = zlib.decompressobj(16 + zlib.MAX_WBITS), b""
                while body:  # a gzip body may hold several members
                    out += decompressor.decompress(body)
                    body = decompressor.unused_data
                    if body:
                        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                body = out
            elif coding == "deflate":
                try:
                    body = zlib.decompress(body)
                except zlib.error:  # raw deflate without the zlib header, as some servers send it
                    body = zlib.decompress(body, -zlib.MAX_WBITS)
            elif coding != "identity":
                return body  # not one we asked for: left as it came, as urllib3 does
        except zlib.error as exc:
            raise requests.exceptions.ContentDecodingError(f"cannot decode a {coding} body: {exc}") from exc
    return body


# What http.client refuses in a request line's target (its _contains_disallowed_url_pchar_re).
_DISALLOWED_IN_TARGET = re.compile("[\x00-\x20\x7f]")
_PLAIN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def _request_bytes(prepared, target: str, scheme: str, host: str, port: int, body) -> bytes | None:
    """The request as ``http.client`` writes it (``putrequest``, ``putheader``, ``endheaders``), in one piece.

    ``http.client`` sends the head and the body in two ``send`` calls, after a dozen calls per header line
    (issue 16: ~10% of a PBX request's CPU; two writes wake the PBX side twice). None when the request
    has anything ``http.client`` would check and refuse, or encode otherwise than plain ASCII (a method
    of its own, a target with a control character or a space, a header name or value that is not an ASCII
    string, a non-ASCII host): those go through ``http.client`` itself, which raises or writes them as before.
    """
    method = prepared.method
    if method not in _PLAIN_METHODS or _DISALLOWED_IN_TARGET.search(target) or _DISALLOWED_IN_TARGET.search(host):
        return None
    lines = [f"{method} {target} HTTP/1.1"]
    headers = prepared.headers
    if "Host" not in headers:
        if ":" in host:
            host = f"[{host}]"
        lines.append(f"Host: {host}" if port == (443 if scheme == "https" else 80) else f"Host: {host}:{port}")
    for name, value in headers.items():
        if value.__class__ is not str or name.__class__ is not str:
            return None  # bytes or int values: http.client's own encoding
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    head = "\r\n".join(lines)
    if not head.isascii():  # http.client writes names in ASCII, values in Latin-1: its own path
        return None
    return head.encode("ascii") + body if body else head.encode("ascii")


# An answer read without http.client: HTTP/1.1, a final status with a body, plain header lines.
_PLAIN_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([2-5]\d\d)(?: ([^\r\n]*))?\r\n")
_PLAIN_ANSWER_HEADER = re.compile(rb"([\x21-\x39\x3b-\x7e]+):([^\r\n]*)")
_MAX_HEAD = 65536


class _Replayed(io.RawIOBase):
    """A socket's stream with the bytes already read from it first: ``http.client`` reads an answer
    the plain reader gave up on from its start."""

    def __init__(self, already: bytes, sock):
        self._already = already
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._already:
            n = min(len(buffer), len(self._already))
            buffer[:n] = self._already[:n]
            self._already = self._already[n:]
            return n
        return self._sock.recv_into(buffer)


class _ReplaySocket:
    def __init__(self, already: bytes, sock):
        self._already, self._sock = already, sock

    def makefile(self, _mode):
        return io.BufferedReader(_Replayed(self._already, self._sock))


class _PlainAnswer:
    """What ``_KeptAlive.send`` reads of an ``http.client`` answer, for one read without it."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], will_close: bool):
        self.status, self.reason, self._headers, self.will_close = status, reason, headers, will_close
        self._msg = None

    def getheaders(self) -> list[tuple[str, str]]:
        return self._headers

    @property
    def msg(self) -> http.client.HTTPMessage:
        """The headers as ``http.client`` gives them (requests' cookie extraction reads ``msg``)."""
        if self._msg is None:
            self._msg = http.client.HTTPMessage()
            for name, value in self._headers:
                self._msg.set_raw(name, value)
        return self._msg


def _read_answer(sock, method: str):
    """(answer, body) of the request just written on ``sock``, read as ``http.client`` reads it.

    The usual answer (HTTP/1.1, a status of 200-599 with a body framed by one Content-Length, up to 100
    plain header lines, nothing after the body) is read here with one or two ``recv``: ``http.client``'s
    buffered reader, line by line, and its answer object were a fifth of a PBX request's CPU (issue 16).
    Anything else (chunked, a 1xx, 204 or 304, an answer to HEAD, a folded header, HTTP/1.0) is handed
    with the bytes already read to ``http.client`` itself, which reads it from the start as before.
    """
    data = sock.recv(65536)
    blank = _blank_line(data)
    while blank < 0 and data and len(data) < _MAX_HEAD:
        more = sock.recv(65536)
        if not more:
            break
        data += more
        blank = _blank_line(data)
    end = data.find(b"\r\n\r\n")
    # The head ends at its first blank line, a bare LF one included (http.client's reader takes those too).
    answer = _plain_answer(data, end, method) if end >= 0 and blank == end + 1 else None
    if answer is None:
        fallback = _Answer(_ReplaySocket(data, sock), method=method)
        fallback.begin()
        return fallback, fallback.read()
    answer, start, length = answer
    body = data[start:start + length]
    while len(body) < length:
        more = sock.recv(max(65536, length - len(body)))
        if not more:
            raise http.client.IncompleteRead(body, length - len(body))
        body += more
    if len(data) - start > length or len(body) > length:  # bytes after the answer: the connection is out of step
        answer.will_close = True
        body = body[:length]
    return answer, body


def _blank_line(data: bytes) -> int:
    """Where the first empty line (after a LF: CRLF or a bare LF) starts, less one; -1 if none yet."""
    found = [at for at in (data.find(b"\n\r\n"), data.find(b"\n\n")) if at >= 0]
    return min(found) if found else -1


def _plain_answer(data: bytes, end: int, method: str):
    """(answer, where the body starts, its length) of a usual answer's head, else None."""
    status_line = _PLAIN_STATUS_LINE.match(data)
    if status_line is None or method == "HEAD":
        return None
    status = int(status_line[1])
    if status in (204, 304):
        return None
    head = data[status_line.end():end]
    lines = head.split(b"\r\n") if head else []
    if len(lines) > http.client._MAXHEADERS:
        return None
    headers, length, will_close = [], None, False
    match = _PLAIN_ANSWER_HEADER.fullmatch
    for line in lines:
        plain = match(line)
        if plain is None:
            return None
        name, value = plain[1].decode("iso-8859-1"), plain[2].decode("iso-8859-1").lstrip(" \t")
        lowered = name.lower()
        if lowered == "content-length":
            if length is not None or not (value.strip().isascii() and value.strip().isdigit()):
                return None  # repeated or odd: http.client's own checks
            length = int(value)
        elif lowered == "transfer-encoding":
            return None
        elif lowered == "connection" and not any(n.lower() == "connection" for n, _v in headers):
            will_close = "close" in value.lower()  # http.client reads the first one
        headers.append((name, value))
    if length is None:
        return None
    reason = (status_line[2] or b"").decode("iso-8859-1").strip()
    return _PlainAnswer(status, reason, headers, will_close), end + 4, length


class _KeptAlive:
    """Kept-alive ``http.client`` connections per (scheme, host, port, trust store), used one request at a time.

    A connection goes back to the idle list only after its whole answer was read and unless the server said
    it would close. One found closed by the server while idle (readable before we sent anything) is
    dropped and a new one opened, as urllib3 does; a request that fails is never sent again here (the
    client's own retries decide that, by method).
    """

    def __init__(self):
        self._idle: dict[tuple, list[http.client.HTTPConnection]] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._contexts: dict[object, ssl.SSLContext] = {}

    def _context(self, verify) -> ssl.SSLContext:
        context = self._contexts.get(verify)
        if context is None:
            if verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                location = DEFAULT_CA_BUNDLE_PATH if verify is True else verify
                if not location or not os.path.exists(location):
                    raise OSError(f"Could not find a suitable TLS CA certificate bundle, invalid path: {location}")
                if os.path.isdir(location):
                    context = ssl.create_default_context(capath=location)
                else:
                    context = ssl.create_default_context(cafile=location)
            self._contexts[verify] = context
        return context

    def _connection(self, key: tuple, connect_timeout) -> tuple[http.client.HTTPConnection, bool]:
        """(a connection, whether it was idle: kept alive from an earlier request)."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
                self._idle, self._pid = {}, os.getpid()
            idle = self._idle.get(key)
            while idle:
                connection = idle.pop()
                if connection.sock is not None and not _readable(connection.sock):
                    return connection, True
                connection.close()  # the server closed it (or sent something unasked) while it was idle
        scheme, host, port, verify = key
        if scheme == "https":
            return _TlsConnection(host, port, timeout=connect_timeout, context=self._context(verify)), False
        return _Connection(host, port, timeout=connect_timeout), False

    def _release(self, key: tuple, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE_PER_HOST:
                idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def send(self, prepared: requests.PreparedRequest, timeout, verify) -> requests.Response:
        parts = urlsplit(prepared.url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise requests.exceptions.InvalidSchema(f"No connection adapters were found for {prepared.url!r}")
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, parts.hostname, port, verify if scheme == "https" else None)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = prepared.body  # bytes or None: a str body (its encoding is urllib3's business) goes through the adapter
        connection, reused = self._connection(key, connect_timeout)
        try:
            if connection.sock is None:
                try:
                    connection.connect()
                except TimeoutError as exc:
                    raise requests.exceptions.ConnectTimeout(str(exc), request=prepared) from exc
            connection.sock.settimeout(read_timeout)
            try:
                written = _request_bytes(prepared, target, scheme, parts.hostname, port, body)
                if written is None:  # something http.client checks and refuses, or encodes its own way
                    # Host from the URL unless the request has its own, as urllib3 writes it.
                    connection.putrequest(prepared.method, target, skip_host="Host" in prepared.headers,
                                          skip_accept_encoding=True)
                    for name, value in prepared.headers.items():
                        connection.putheader(name, value)
                    connection.endheaders(body)
                    answer = connection.getresponse()
                    content = answer.read()
                else:
                    connection.sock.sendall(written)
                    answer, content = _read_answer(connection.sock, prepared.method)
            except TimeoutError as exc:
                raise requests.exceptions.ReadTimeout(str(exc), request=prepared) from exc
        except requests.RequestException:
            connection.close()
            raise
        except ssl.SSLError as exc:
            connection.close()
            raise requests.exceptions.SSLError(str(exc), request=prepared) from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise requests.exceptions.ConnectionError(
                f"{exc.__class__.__name__}: {exc}{' (on a kept-alive connection)' if reused else ''}",
                request=prepared) from exc
        except BaseException:
            connection.close()
            raise
        if answer.will_close:
            connection.close()
        else:
            self._release(key, connection)
        pairs = answer.getheaders()
        headers = HTTPHeaderDict()
        for name, value in pairs:
            headers.add(name, value)
        response = requests.Response()
        response.status_code = answer.status
        response.headers = _folded(pairs)
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = _RawAnswer(headers, answer)
        response.reason = answer.reason
        response.url = prepared.url
        response.request = prepared
        encoding = headers.get("Content-Encoding")
        response._content = _decoded(content, encoding) if encoding else content
        response._content_consumed = True
        if _may_set_cookies(response.raw):
            extract_cookies_to_jar(response.cookies, prepared, response.raw)
        return response
