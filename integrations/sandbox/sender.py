"""How the sandbox providers send their webhooks: one keep-alive connection per origin for
each delivery thread, on the standard library's http.client.

requests (with urllib3 under it) cost the sandbox's Stripe about a seventh of its CPU per
order for one small POST to one endpoint (py-spy, bench/README.md): its session, adapters,
hooks and connection pool are for clients of many origins, and this one has one. The
sandbox runs on the machine that runs the pipeline in `make bench`, so what it spends is
taken from the pipeline's measure."""

from __future__ import annotations

import http.client
import ssl
from urllib.parse import urlsplit

TIMEOUT_SECONDS = 10.0


class Sender:
    """POSTs for one thread (http.client's connections are not shared between threads)."""

    def __init__(self, timeout: float = TIMEOUT_SECONDS) -> None:
        self._timeout = timeout
        self._open: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def post(self, url: str, payload: bytes, headers: dict[str, str]) -> bool:
        """True if the endpoint answered 2xx. A kept connection that the server has closed
        meanwhile (gunicorn closes idle ones after 2 s) is replaced and the POST sent once
        more: the receiver may then see it twice, which webhooks allow (at least once)."""
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        kept = self._open.pop(origin, None)
        for conn in (kept, None) if kept else (None,):
            conn = conn or self._connect(parts.scheme, parts.netloc)
            try:
                conn.request("POST", target, body=payload, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                continue
            if response.will_close:
                conn.close()
            else:
                self._open[origin] = conn
            return 200 <= response.status < 300
        return False

    def close(self) -> None:
        for conn in self._open.values():
            conn.close()
        self._open.clear()

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            # Verified against the system's CAs, as every TLS connection of this project.
            context = ssl.create_default_context()
            return http.client.HTTPSConnection(netloc, timeout=self._timeout, context=context)
        return http.client.HTTPConnection(netloc, timeout=self._timeout)
