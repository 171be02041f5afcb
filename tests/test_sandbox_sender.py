"""The sandbox providers' webhook sender (integrations/sandbox/sender.py), against a real
HTTP server: one kept connection for many events; a kept connection that the server has
closed replaced without losing the event; a refusal, a timeout, an absent server or a URL
it cannot send to reported as not delivered and not sent again; TLS verified."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme

from integrations.sandbox import sender as sender_module
from integrations.sandbox.sender import Sender
from tests.services import free_port


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[int, str, bytes]] = []  # (client port, path, body)
        self.status = 204
        self.drop_after_answer = False  # close the connection without saying so
        self.delay = 0.0  # seconds before answering


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.client_address[1], self.path, body))
        time.sleep(self.server.delay)
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        # As a server that times out an idle keep-alive connection: it is gone by the time
        # the client sends on it again, and nothing in the answer said it would be.
        self.close_connection = self.server.drop_after_answer

    def log_message(self, *args: object) -> None:
        pass


def _serving(server: _Receiver) -> Iterator[_Receiver]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    yield from _serving(_Receiver())


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_receiver(ca: trustme.CA) -> Iterator[_Receiver]:
    server = _Receiver()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from _serving(server)


def _url(server: _Receiver, path: str = "/hook", scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.server_port}{path}"


def test_events_go_over_one_kept_connection(receiver):
    sender = Sender()
    headers = {"Content-Type": "application/json"}
    assert sender.post(_url(receiver, "/hook?x=1"), b'{"n": 1}', headers)
    assert sender.post(_url(receiver), b'{"n": 2}', headers)
    sender.close()
    assert [(path, body) for _, path, body in receiver.received] == [
        ("/hook?x=1", b'{"n": 1}'),
        ("/hook", b'{"n": 2}'),
    ]
    assert len({port for port, _, _ in receiver.received}) == 1  # one TCP connection


def test_a_kept_connection_the_server_closed_is_replaced_and_the_event_arrives(receiver):
    sender = Sender()
    receiver.drop_after_answer = True
    assert sender.post(_url(receiver), b"first", {})
    assert sender.post(_url(receiver), b"second", {})  # on the dead one first, then anew
    assert [body for _, _, body in receiver.received] == [b"first", b"second"]
    assert len({port for port, _, _ in receiver.received}) == 2


def test_a_refusal_on_a_kept_connection_is_not_delivered_and_not_sent_again(receiver):
    sender = Sender()
    assert sender.post(_url(receiver), b"first", {})
    receiver.status = 500
    assert not sender.post(_url(receiver), b"second", {})
    assert [body for _, _, body in receiver.received] == [b"first", b"second"]  # once each


def test_a_timeout_is_not_delivered_and_not_sent_again(receiver):
    sender = Sender(timeout=0.5)
    assert sender.post(_url(receiver), b"first", {})
    receiver.delay = 1.5  # the endpoint is slow: it may still act on it, so no second copy
    assert not sender.post(_url(receiver), b"second", {})
    time.sleep(1.5)
    assert [body for _, _, body in receiver.received] == [b"first", b"second"]


def test_no_server_or_a_url_it_cannot_send_to_is_not_delivered():
    sender = Sender(timeout=2)
    assert not sender.post(f"http://127.0.0.1:{free_port()}/hook", b"{}", {})
    assert not sender.post("ftp://127.0.0.1/hook", b"{}", {})
    assert not sender.post("http://127.0.0.1:port/hook", b"{}", {})  # http.client refuses it


def test_tls_is_verified(tls_receiver, ca, monkeypatch):
    # Its certificate's CA is not one the sender trusts: refused before anything is sent.
    assert not Sender(timeout=2).post(_url(tls_receiver, scheme="https"), b"{}", {})
    assert tls_receiver.received == []
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    monkeypatch.setattr(sender_module, "_tls_context", lambda: trusting)
    assert Sender(timeout=2).post(_url(tls_receiver, scheme="https"), b"{}", {})
    assert [body for _, _, body in tls_receiver.received] == [b"{}"]
