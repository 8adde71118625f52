"""ASGI entry point for daphne: Django over HTTP (on a thread pool, see ``http_pool``), Channels over websockets.

Websockets are authenticated by the Django session and refused unless their
Origin is one of ALLOWED_HOSTS, so another site cannot open an agent's feed.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ctihub.settings")
django.setup(set_prefix=False)  # must run before importing consumers

from ctihub.http_pool import PooledASGIHandler  # noqa: E402

django_asgi_app = PooledASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from ctihub.routing import websocket_urlpatterns  # noqa: E402
from ctihub.ws_security import ExplainingOriginValidator  # noqa: E402

if settings.EMBEDDED_REDIS:
    from ctihub import embedded_redis

    embedded_redis.ensure_running(settings.VAR_DIR)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": ExplainingOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
