"""How the sandbox providers send their webhooks: one keep-alive connection per origin for
each delivery thread, on the standard library's http.client.

requests (with urllib3 under it) cost the sandbox's Stripe about a seventh of its CPU per
order for one small POST to one endpoint (py-spy, bench/README.md): its session, adapters,
hooks and connection pool are for clients of many origins, and this one has one. The
sandbox runs on the machine that runs the pipeline in `make bench`, so what it spends is
taken from the pipeline's measure."""

from __future__ import annotations

import functools
import http.client
import logging
import select
import ssl
from urllib.parse import urlsplit

import certifi

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10.0
# What a kept connection that the server closed between two requests raises, before any
# answer: the request was not taken, and is sent once more on a new connection.
_CLOSED_UNDER_US = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class Sender:
    """POSTs for one thread (http.client's connections are not shared between threads). A
    failed POST is not sent again here, except on a kept connection that the server closed
    before answering: the caller's own retries, with their waits, decide the rest."""

    def __init__(self, timeout: float = TIMEOUT_SECONDS) -> None:
        self._timeout = timeout
        self._open: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def post(self, url: str, payload: bytes, headers: dict[str, str]) -> bool:
        """True if the endpoint answered 2xx; False for any other answer, an unreachable
        endpoint, a timeout or a URL this cannot send to."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            logger.warning("sandbox webhook: cannot send to %r", url)
            return False
        origin = (parts.scheme, parts.netloc)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        kept = self._kept(origin)
        for conn in (kept, None) if kept else (None,):
            try:
                conn = conn or self._connect(parts.scheme, parts.netloc)
                conn.request("POST", target, body=payload, headers=headers)
                response = conn.getresponse()
                response.read()
            except _CLOSED_UNDER_US:
                if conn is not None:
                    conn.close()
                if kept is not None and conn is kept:
                    continue  # closed between two requests: once more, on a new one
                return False
            except (OSError, http.client.HTTPException, ValueError):
                # Refused, timed out (never sent again: the endpoint may be working on it),
                # a broken answer, a URL http.client refuses.
                if conn is not None:
                    conn.close()
                return False
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

    def _kept(self, origin: tuple[str, str]) -> http.client.HTTPConnection | None:
        """The origin's kept connection, unless the server has closed it meanwhile: an idle
        keep-alive socket that reads as ready holds only its end (as urllib3 checks)."""
        conn = self._open.pop(origin, None)
        if conn is None or conn.sock is None:
            return None
        if select.select([conn.sock], [], [], 0)[0]:
            conn.close()
            return None
        return conn

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(
                netloc, timeout=self._timeout, context=_tls_context()
            )
        return http.client.HTTPConnection(netloc, timeout=self._timeout)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Certificates checked, and against the URL's host name: Mozilla's CAs (certifi), as
    requests used here before and as the shops' webhooks use (integrations/webhook_sender.py)."""
    return ssl.create_default_context(cafile=certifi.where())
