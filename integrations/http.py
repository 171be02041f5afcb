"""HTTP calls to providers: explicit timeouts, and one mapping from failures to errors."""

import threading
from typing import Any

import requests
from django.conf import settings

from .errors import PermanentError, TransientError

_local = threading.local()


def _session() -> requests.Session:
    # A Session per thread keeps connections alive without sharing one across threads.
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


def call(
    method: str,
    url: str,
    *,
    json: dict | None = None,
    params: dict | None = None,
    idempotency_key: str | None = None,
) -> tuple[int, Any]:
    """Send one request; return (status, JSON body) for 2xx and the 4xx listed as business
    answers by the caller. Raise TransientError for what a retry may cure."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    timeout = (settings.PROVIDER_CONNECT_TIMEOUT_SECONDS, settings.PROVIDER_TIMEOUT_SECONDS)
    try:
        response = _session().request(
            method, url, json=json, params=params, headers=headers, timeout=timeout
        )
    except requests.Timeout as exc:
        raise TransientError(f"{method} {url}: timed out after {timeout[1]}s") from exc
    except requests.ConnectionError as exc:
        raise TransientError(
            f"{method} {url}: connection failed ({exc.__class__.__name__})"
        ) from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise TransientError(f"{method} {url}: HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError as exc:
        raise TransientError(
            f"{method} {url}: HTTP {response.status_code}, body is not JSON"
        ) from exc
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise PermanentError(
            f"{method} {url}: HTTP {response.status_code} {error.get('message', '')}".strip(),
            code=error.get("code", f"http_{response.status_code}"),
        )
    return response.status_code, body


def sandbox_url(path: str) -> str:
    return settings.SANDBOX_URL.rstrip("/") + "/" + path.lstrip("/")
