"""The sandbox providers' webhook sender (integrations/sandbox/sender.py), against a real
HTTP server on a free port: one kept connection for many events, a kept connection that
the server has closed replaced without losing the event, a refusal or an absent server
reported as not delivered."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from integrations.sandbox.sender import Sender
from tests.services import free_port


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[int, str, bytes]] = []  # (client port, path, body)
        self.status = 204
        self.drop_after_answer = False  # close the connection without saying so


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.client_address[1], self.path, body))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        # As a server that times out an idle keep-alive connection: it is gone by the time
        # the client sends on it again, and nothing in the answer said it would be.
        self.close_connection = self.server.drop_after_answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: _Receiver, path: str = "/hook") -> str:
    return f"http://127.0.0.1:{server.server_port}{path}"


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


def test_a_refusal_or_no_server_is_not_delivered(receiver):
    sender = Sender(timeout=2)
    receiver.status = 500
    assert not sender.post(_url(receiver), b"{}", {})
    assert len(receiver.received) == 1  # refused once, not sent again by the sender
    assert not sender.post(f"http://127.0.0.1:{free_port()}/hook", b"{}", {})
