from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.i18n import set_language
from drf_spectacular.views import SpectacularAPIView

from ctihub.lib.health import healthz
from ctihub.lib.js_catalog import CachedJavaScriptCatalog
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
    # The language chooser's POST (it sets Django's language cookie) and the JavaScript strings of the
    # console's scripts in that language (djangojs catalogs): an external script, so the CSP allows it; rendered
    # once a process and revalidated by ETag (ctihub/lib/js_catalog.py).
    path("i18n/setlang/", set_language, name="set_language"),
    path("jsi18n/", CachedJavaScriptCatalog.as_view(packages=["ctihub"]), name="javascript-catalog"),
    path("api/retailcrm/", include("crm_sync.urls")),
    *bench_floors,
    *registry.url_patterns(),  # each PBX provider's own (telephony/providers/<kind>/urls.py), as it registered
    path("", include("telephony.urls")),  # the console and the wallboard
    path("", include("accounts.urls")),  # log in and out
]
