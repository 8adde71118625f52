from django.urls import path

from telephony import views

urlpatterns = [
    path("", views.console, name="console"),
    path("wallboard/", views.wallboard, name="wallboard"),
]
