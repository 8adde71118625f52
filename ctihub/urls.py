from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from ctihub.health import healthz
from ctihub.metrics import metrics_view

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("admin/", admin.site.urls),
    path("api/retailcrm/", include("crm_sync.urls")),
    path("api/telepo/", include("telephony.providers.telepo.urls")),
    path("enduser/", include("telephony.providers.istra_enduser.urls")),
    path("", include("accounts.urls")),
]
