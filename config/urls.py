from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from orders.api.errors import not_found_view, server_error_view
from orders.views import api_health, healthz, metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/health/", api_health, name="api-health"),
    path("api/", include("orders.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
]

# The sandbox providers exist only where settings switch them on (local, test); production
# has no such routes at all.
if settings.SANDBOX_ENABLED:
    urlpatterns.append(path("sandbox/", include("integrations.sandbox.urls")))

handler404 = not_found_view
handler500 = server_error_view
