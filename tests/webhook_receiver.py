"""A shop's webhook receiver for the tests: an HTTP server on 127.0.0.1 (a free port) that
verifies every request's signature with standardwebhooks, as a shop would, and records what
came. It can answer any status, answer slowly, redirect, and go down and come back on the
same port."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.services import free_port


@dataclass
class Received:
    webhook_id: str
    type: str
    order_id: str
    at: float  # time.time() when it came
    created: str  # the event's `created`
    verified_by: list[int]  # indexes into the receiver's secrets that verify it
    answered: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)


class Receiver:
    def __init__(self, *secrets: str, status: int = 204, delay: float = 0.0) -> None:
        self.secrets = list(secrets)
        self.status = status
        self.delay = delay
        self.location = ""  # with a 3xx status: where it points
        self.paths: dict[str, int] = {}  # a URL path -> the index of the one secret it verifies
        self.port = free_port()
        self.requests: list[Received] = []  # every request, verified or not, in arrival order
        self.started: list[str] = []  # webhook-ids whose request began (before any delay)
        self.started_at: list[float] = []  # and when (time.monotonic())
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    # --- what came ------------------------------------------------------------------------
    def delivered(self) -> list[Received]:
        """Requests answered 2xx with a verified signature, first copy of each webhook-id."""
        seen: set[str] = set()
        found = []
        for request in list(self.requests):
            if 200 <= request.answered < 300 and request.verified_by:
                if request.webhook_id not in seen:
                    seen.add(request.webhook_id)
                    found.append(request)
        return found

    def types_by_order(self) -> dict[str, list[str]]:
        by_order: dict[str, list[str]] = {}
        for request in self.delivered():
            by_order.setdefault(request.order_id, []).append(request.type)
        return by_order

    def most_begun_within(self, seconds: float) -> int:
        """The most requests that began within any `seconds`: with a sender that waits out
        its timeout on each, at most the sender's attempts in flight."""
        times = sorted(self.started_at)
        return max(
            (sum(1 for t in times[i:] if t - start < seconds) for i, start in enumerate(times)),
            default=0,
        )

    def unverified(self) -> list[Received]:
        return [r for r in self.requests if not r.verified_by]

    # --- the server -----------------------------------------------------------------------
    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        webhook_id = headers.get("webhook-id", "")
        with self._lock:
            self.started.append(webhook_id)
            self.started_at.append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            verified_by = []
            # A request to one of `paths` is checked against its endpoint's secret alone, as
            # its shop would; any other against every secret (which one signed it is news).
            only = self.paths.get(handler.path)
            candidates = (
                [(only, self.secrets[only])] if only is not None else enumerate(self.secrets)
            )
            for index, secret in candidates:
                try:
                    Webhook(secret).verify(body, headers)
                except WebhookVerificationError:
                    continue
                verified_by.append(index)
            status = self.status if verified_by else 400
            try:
                payload = json.loads(body)
            except ValueError:
                payload = {}
            order = (payload.get("data") or {}).get("order") or {}
            self.requests.append(
                Received(
                    webhook_id=webhook_id,
                    type=payload.get("type", ""),
                    order_id=str(order.get("id", "")),
                    at=time.time(),
                    created=payload.get("created", ""),
                    verified_by=verified_by,
                    answered=status,
                    headers=headers,
                    body=payload,
                )
            )
            handler.send_response(status)
            if self.location:
                handler.send_header("Location", self.location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up (its timeout): as a real shop's server would see it
        finally:
            with self._lock:
                self.in_flight -= 1
