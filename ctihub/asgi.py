"""ASGI entry point for daphne: Django over HTTP (on a thread pool, see ``http_pool``), Channels over websockets.

Websockets are authenticated by the Django session and refused unless their
Origin is the hub's own or a CSRF-trusted one (ctihub/lib/ws_security.py), so another
site cannot open an agent's feed.
"""

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ctihub.settings")
django.setup(set_prefix=False)  # must run before importing consumers

from django.conf import settings  # noqa: E402

from ctihub.lib import card_trace  # noqa: E402
from ctihub.lib.http_pool import PooledASGIHandler  # noqa: E402
from ctihub.lib.threads import use_configured_switch_interval  # noqa: E402

use_configured_switch_interval()
card_trace.watch_pauses("daphne")  # only with CARD_TRACE (the pop-up benchmark)

django_asgi_app = PooledASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from ctihub.lib.ws_db import PooledAuthMiddlewareStack  # noqa: E402
from ctihub.lib.ws_security import ExplainingOriginValidator  # noqa: E402
from ctihub.routing import websocket_urlpatterns  # noqa: E402

if settings.EMBEDDED_REDIS:
    from ctihub.lib import embedded_redis

    embedded_redis.ensure_running(settings.VAR_DIR)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": ExplainingOriginValidator(PooledAuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

# Everything loaded by now (Django, DRF, Twisted, the URLconf and its views: some 120,000
# objects) lives as long as the process. Left to the collector, each full collection walked
# all of it and stalled every request for 100-600 ms (benchmark 4's p99); frozen, it takes ~15 ms.
get_resolver().url_patterns
gc.freeze()
