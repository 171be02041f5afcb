"""Errors in workers reach Sentry (SENTRY_DSN), received here by a stand-in Sentry server."""

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import wait_for
from tests.services import free_port


class _Sentry(BaseHTTPRequestHandler):
    envelopes: list[bytes] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.envelopes.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def sentry_server():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Sentry)
    _Sentry.envelopes = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_failing_task_is_reported_to_sentry(stack_factory, sentry_server):
    dsn = f"http://public@127.0.0.1:{sentry_server.server_address[1]}/1"
    stack = stack_factory(env={"SENTRY_DSN": dsn, "SENTRY_ENVIRONMENT": "test"}, workers=1)

    # A bug, not a transient error: an order id that is no UUID at all.
    stack.celery.send_task("orders.compensate_order", kwargs={"order_id": "not-a-uuid"})

    envelopes = wait_for(
        lambda: [e for e in _Sentry.envelopes if b"orders.compensate_order" in e],
        timeout=60,
        what=f"a Sentry event; worker log:\n{stack.logs()}",
    )
    assert b"badly formed hexadecimal UUID string" in envelopes[0]  # the ValueError
    assert b'"environment":"test"' in envelopes[0]
