"""Websocket origin check, by Django's CSRF rules, that tells the page why it was refused.

A browser sends the page's origin (scheme, host and port) with every websocket
handshake, and the session cookie whatever page opened it: the origin is all that
tells the hub's own console from another site's page, or from a page on another
port of the same host. So, as Django's CSRF check does for a POST, the whole
origin must be the request's own (``http(s)://`` + its Host, a host in
ALLOWED_HOSTS; https when the connection or the proxy's SECURE_PROXY_SSL_HEADER
says so) or one of CSRF_TRUSTED_ORIGINS (``https://*.example.com`` for
subdomains).

Channels' AllowedHostsOriginValidator rejects the handshake, which a browser
only sees as close code 1006 ("abnormal"), indistinguishable from a network
drop, so the page would retry forever. We accept and close at once with 4403
instead: the page shows "opened from a site that is not ctihub" and stops.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

CLOSE_FOREIGN_ORIGIN = 4403


def _header(headers: dict[bytes, bytes], name: str) -> str | None:
    value = headers.get(name.lower().encode("latin1"))
    return value.decode("latin1") if value is not None else None


def _is_secure(scope, headers: dict[bytes, bytes]) -> bool:
    """``HttpRequest.is_secure()`` for a websocket scope."""
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        forwarded = _header(headers, meta_name.removeprefix("HTTP_").replace("_", "-"))
        if forwarded is not None:
            return forwarded.split(",")[0].strip() == secure_value
    return scope.get("scheme") in ("wss", "https")


def _host(scope, headers: dict[bytes, bytes]) -> str | None:
    """``HttpRequest.get_host()`` for a websocket scope; None where Django would raise DisallowedHost."""
    host = None
    if settings.USE_X_FORWARDED_HOST:
        host = _header(headers, "X-Forwarded-Host")
    host = host or _header(headers, "Host")
    if not host and scope.get("server"):
        server_host, server_port = scope["server"][0], scope["server"][1]
        if ":" in server_host:  # an IPv6 address, written in brackets in a URL
            server_host = f"[{server_host}]"
        host = server_host if server_port in (80, 443, None) else f"{server_host}:{server_port}"
    if not host:
        return None
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    return host


def own_origin(scope) -> str | None:
    """The origin of the hub as this connection reached it, e.g. ``https://ctihub.example.com``."""
    headers = dict(scope.get("headers", []))
    host = _host(scope, headers)
    if host is None:
        return None
    return f"{'https' if _is_secure(scope, headers) else 'http'}://{host}"


def origin_allowed(scope) -> bool:
    origin = _header(dict(scope.get("headers", [])), "Origin")
    if not origin or origin == "null":
        return False  # browsers always send one; a client without it is not a browser page of ours
    own = own_origin(scope)
    if own is not None and origin.lower() == own.lower():
        return True
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    netloc = parsed.netloc.lower()
    if not parsed.scheme or not netloc:
        return False
    # CSRF_TRUSTED_ORIGINS' wildcards, as Django reads them: "https://*.example.com" is any subdomain, over https.
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        if "*" not in trusted:
            continue
        trusted_parts = urlsplit(trusted)
        if trusted_parts.scheme == parsed.scheme and is_same_domain(netloc, trusted_parts.netloc.lstrip("*")):
            return True
    return False


class ExplainingOriginValidator:
    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": CLOSE_FOREIGN_ORIGIN})
            return
        return await self.application(scope, receive, send)
