"""The routes of the sandbox's own server (config/settings/sandbox.py): the sandbox alone, at
the same paths as on the app's server."""

from django.urls import include, path

urlpatterns = [path("sandbox/", include("integrations.sandbox.urls"))]
