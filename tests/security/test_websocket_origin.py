"""The console websocket takes only pages of the hub itself: the whole origin, as Django's CSRF check reads it.

A page served by any other origin (another port of the hub's host, the other scheme, another allowed
host name) opened ``/ws/console/`` with the agent's cookie, read her snapshot and set her status: only
the host name was compared. Now the Origin must equal the connection's own (scheme from the connection
or the proxy's X-Forwarded-Proto, host and port from Host, a host in ALLOWED_HOSTS) or be one of
CSRF_TRUSTED_ORIGINS.
"""

from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client

from ctihub.asgi import application
from ctihub.lib.ws_security import CLOSE_FOREIGN_ORIGIN, ExplainingOriginValidator
from tests.factories import make_agent


@pytest.fixture(autouse=True)
def hosts(settings):
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "ctihub.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = []
    return settings


async def _open(app, headers, scheme):
    comm = WebsocketCommunicator(app, "/ws/console/", headers=headers)
    if scheme:
        comm.scope["scheme"] = scheme
    connected, _ = await comm.connect()
    assert connected
    code = (await comm.receive_output(timeout=5))["code"]
    await comm.wait()
    return code


def accepted(origin: str | None, host: str | None, scheme: str | None = "ws", **more_headers) -> bool:
    """Whether the origin check lets the handshake through to the app behind it."""

    async def app_behind(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    headers = [(name.replace("_", "-").encode(), value.encode()) for name, value in more_headers.items()]
    if host is not None:
        headers.append((b"host", host.encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    code = asyncio.run(_open(ExplainingOriginValidator(app_behind), headers, scheme))
    assert code in (1000, CLOSE_FOREIGN_ORIGIN)
    return code == 1000


@pytest.mark.parametrize("origin, host", [
    ("http://127.0.0.1:8002", "127.0.0.1:8002"),
    ("http://localhost:8000", "localhost:8000"),
    ("http://[::1]:8002", "[::1]:8002"),  # the brackets were lost when the origin was parsed
    ("http://ctihub.example.com", "ctihub.example.com"),
])
def test_it_accepts_a_page_of_the_hub_itself(origin, host):
    assert accepted(origin, host)


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1:8199",  # the hub's host, another port: another site for a browser
    "https://127.0.0.1:4444",
    "https://127.0.0.1:8002",  # the other scheme
    "http://localhost:9999",
    "http://localhost:8002",  # another allowed host name
    "http://testserver",
    "https://evil.example",
    "null",
    "",
])
def test_it_refuses_every_other_origin_even_on_the_hubs_own_host(origin):
    assert not accepted(origin, "127.0.0.1:8002")


def test_it_refuses_a_page_without_an_origin_or_a_host_not_served():
    assert not accepted(None, "127.0.0.1:8002")
    assert not accepted("http://evil.example", "evil.example")  # DNS rebinding: the name is not ours


def test_it_takes_https_from_the_connection_or_the_proxy_header():
    assert accepted("https://ctihub.example.com", "ctihub.example.com", scheme="wss")
    assert not accepted("http://ctihub.example.com", "ctihub.example.com", scheme="wss")
    assert accepted("https://ctihub.example.com", "ctihub.example.com", x_forwarded_proto="https")
    assert not accepted("https://ctihub.example.com", "ctihub.example.com")


def test_it_accepts_csrf_trusted_origins_and_their_subdomain_wildcards(hosts):
    hosts.CSRF_TRUSTED_ORIGINS = ["https://console.example.net", "https://*.example.org"]
    assert accepted("https://console.example.net", "127.0.0.1:8000")
    assert accepted("https://eu.example.org", "127.0.0.1:8000")
    assert not accepted("http://eu.example.org", "127.0.0.1:8000")  # the scheme counts for wildcards too
    assert not accepted("https://eu.example.org:8443", "127.0.0.1:8000")
    assert not accepted("https://console.example.net.evil.example", "127.0.0.1:8000")


@pytest.mark.django_db(transaction=True)
def test_it_keeps_an_agents_console_from_a_page_on_another_port_of_the_hubs_host(settings):
    """The attack as it was run: the agent's cookie, the hub's host name, the page on another port."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    client = Client()
    client.force_login(make_agent().user)
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"

    async def console(origin: str):
        comm = WebsocketCommunicator(application, "/ws/console/", headers=[
            (b"host", b"127.0.0.1:8002"), (b"origin", origin.encode()), (b"cookie", cookie.encode())])
        connected, _ = await comm.connect()
        assert connected
        first = await comm.receive_output(timeout=5)
        await comm.disconnect()
        return first

    refused = asyncio.run(console("http://127.0.0.1:8199"))
    assert refused == {"type": "websocket.close", "code": CLOSE_FOREIGN_ORIGIN}
    own = asyncio.run(console("http://127.0.0.1:8002"))
    assert own["type"] == "websocket.send" and '"snapshot"' in own["text"]
