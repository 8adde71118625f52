from django.urls import path

from telephony import views

urlpatterns = [
    path("", views.console, name="console"),
    path("wallboard/", views.wallboard, name="wallboard"),
    path("console/alerts/", views.console_alerts, name="console-alerts"),
]
