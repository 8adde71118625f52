"""What Telepo calls on ctihub, under /api/telepo/ (see ``views``)."""

from django.urls import path

from telephony.providers.telepo import views

urlpatterns = [
    path("webhook/<str:secret>", views.webhook, name="telepo-webhook"),
]
