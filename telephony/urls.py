from django.urls import path

from telephony import views

urlpatterns = [
    path("", views.console, name="console"),
    path("wallboard/", views.wallboard, name="wallboard"),
    path("console/alerts/", views.console_alerts, name="console-alerts"),
    path("console/dial/", views.console_dial, name="console-dial"),
    path("history/", views.call_history, name="history"),
    path("history/calls.csv", views.call_history_csv, name="history-csv"),
]
