"""Every websocket route of the hub, gathered in one list for the ASGI router."""

from django.conf import settings
from django.urls import path

from telephony.consumers import ConsoleConsumer

websocket_urlpatterns = [
    path("ws/console/", ConsoleConsumer.as_asgi()),
]

if settings.BENCH_FLOORS:
    # The pop-up benchmark's floor (bench/floor_consumer.py): never served unless asked for.
    from bench.floor_consumer import FloorConsumer

    websocket_urlpatterns.append(path("ws/bench/floor/<str:group>/", FloorConsumer.as_asgi()))
