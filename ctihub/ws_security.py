"""Websocket origin check that tells the page why it was refused.

Channels' AllowedHostsOriginValidator rejects the handshake, which a browser
only sees as close code 1006 ("abnormal"), indistinguishable from a network
drop, so the page would retry forever. We accept and close at once with 4403
instead: the page shows "opened from a site that is not ctihub" and stops.
"""

from urllib.parse import urlparse

from django.conf import settings
from django.http.request import validate_host

CLOSE_FOREIGN_ORIGIN = 4403


def origin_allowed(headers: list[tuple[bytes, bytes]]) -> bool:
    origin = dict(headers).get(b"origin")
    if origin is None:
        return False  # browsers always send one; a client without it is not a browser page of ours
    host = urlparse(origin.decode("latin1")).hostname
    if not host:
        return False
    return validate_host(host, settings.ALLOWED_HOSTS)


class ExplainingOriginValidator:
    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope.get("headers", [])):
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": CLOSE_FOREIGN_ORIGIN})
            return
        return await self.application(scope, receive, send)
