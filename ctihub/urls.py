from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from ctihub.lib.health import healthz
from ctihub.lib.metrics import metrics_view
from telephony.providers import registry

# The benchmarks' floors (bench/floor_views.py): bare views on the same daphne and middleware, never in
# production. Right after makeCallUrl's prefix, so both pay the same URL resolution.
bench_floors = [path("api/bench-floor/", include("bench.floor_views"))] if settings.BENCH_FLOORS else []

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("admin/", admin.site.urls),
    path("api/retailcrm/", include("crm_sync.urls")),
    *bench_floors,
    *registry.url_patterns(),  # each PBX provider's own (telephony/providers/<kind>/urls.py), as it registered
    path("", include("telephony.urls")),  # the console and the wallboard
    path("", include("accounts.urls")),  # log in and out
]
