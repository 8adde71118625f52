"""Every websocket route of the hub, gathered in one list for the ASGI router."""

from django.urls import path

from telephony.consumers import ConsoleConsumer

websocket_urlpatterns = [
    path("ws/console/", ConsoleConsumer.as_asgi()),
]
