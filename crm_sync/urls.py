"""What retailCRM calls on ctihub, under /api/retailcrm/ (see crm_sync.retailcrm.views)."""

from django.urls import path

from crm_sync.retailcrm import views

urlpatterns = [
    path("make-call", views.MakeCallView.as_view(), name="retailcrm-make-call"),
    path("user-status", views.UserStatusView.as_view(), name="retailcrm-user-status"),
    path("logo.svg", views.logo, name="retailcrm-logo"),
    path("records/<str:token>", views.record, name="retailcrm-record"),
]
