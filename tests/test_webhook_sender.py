"""integrations.webhook_sender on real sockets: a receiver on 127.0.0.1 (plain and TLS, with a
CA of the test's own from trustme), and names resolved by a stand-in getaddrinfo where a test
needs a name to resolve to a given address without DNS. No test needs the internet."""

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme

from integrations import webhook_sender
from integrations.webhook_sender import UnsafeURL, check_url, send

PAYLOAD = b'{"id": "evt_1", "type": "order.paid"}'
HEADERS = {
    "Content-Type": "application/json",
    "webhook-id": "msg_1",
    "webhook-timestamp": "1700000000",
    "webhook-signature": "v1,c2lnbmF0dXJl",
}


@dataclass
class Receiver:
    """A shop's server on 127.0.0.1: records every request, answers by path."""

    port: int
    scheme: str
    requests: list[dict] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # TLS: the SNI each client sent

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


def _serve(stop: threading.Event, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            receiver.requests.append(
                {"path": self.path, "headers": dict(self.headers.items()), "body": body}
            )
            try:
                self._answer()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading (the 1 MB body): that is what it should do

        def _answer(self) -> None:
            if self.path == "/slow":
                stop.wait(10)
            if self.path == "/drip":
                # The status line at once, then a header a byte every 0.2 s: each recv is quick,
                # only a deadline over the whole attempt ends it.
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                while not stop.wait(0.2):
                    self.wfile.write(b"x")
                return
            status, extra, body = {
                "/fail": (500, {}, b"boom"),
                "/redirect": (302, {"Location": receiver.url("/ok")}, b""),
                "/big": (200, {}, b"x" * 1_000_000),
            }.get(self.path, (200, {}, b"thanks"))
            self.send_response(status)
            for name, value in {**extra, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that went away (timeouts, refused certificates) is the test's point

    server = Server(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    receiver = Receiver(port=server.server_address[1], scheme="https" if tls else "http")
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: receiver.server_names.append(name)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield receiver
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve(threading.Event())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_receiver(ca: trustme.CA) -> Iterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("shop.test", "127.0.0.1").configure_cert(context)
    yield from _serve(threading.Event(), tls=context)


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def resolve(monkeypatch) -> Callable[[dict[str, list[str]]], None]:
    """resolve({"shop.example": ["10.0.0.5"]}): those names answer with those addresses, as a
    DNS server would; every other name resolves as usual."""
    real = socket.getaddrinfo

    def install(answers: dict[str, list[str]]) -> None:
        def getaddrinfo(host, port, *args, **kwargs):
            if host not in answers:
                return real(host, port, *args, **kwargs)
            if not answers[host]:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0))
                if ":" in ip
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in answers[host]
            ]

        monkeypatch.setattr(webhook_sender.socket, "getaddrinfo", getaddrinfo)

    return install


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- check_url: at registration -----------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://10.1.2.3/",
        "https://172.16.0.1/",
        "https://192.168.1.1/",
        "https://169.254.169.254/latest/meta-data/",  # the cloud metadata service
        "https://100.64.0.1/",  # carrier-grade NAT
        "https://0.0.0.0/",
        "https://224.0.0.1/",
        "https://240.0.0.1/",  # reserved
        "https://[::1]/",
        "https://[::]/",
        "https://[fe80::1]/",
        "https://[fc00::1]/",
        "https://[fec0::1]/",  # site-local: ipaddress calls it global
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:169.254.169.254]/",
        "https://[2002:7f00:1::]/",  # 6to4 around 127.0.0.1: ipaddress calls it global
        "https://[64:ff9b::a00:1]/",  # NAT64 around 10.0.0.1
        "https://2130706433/",  # 127.0.0.1 in decimal
        "https://0177.0.0.1/",  # in octal
        "https://0x7f.1/",  # in hexadecimal, shortened
        "https://127.1/",  # shortened
        "https://localhost/",  # a name resolving to loopback
        "https://localhost:8443/hooks",
    ],
)
def test_check_url_refuses_addresses_inside_any_network(url):
    with pytest.raises(UnsafeURL, match="address: webhooks go to public addresses only"):
        check_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://93.184.215.14/", "must start with https://"),
        ("ftp://93.184.215.14/", "must start with https://"),
        ("93.184.215.14/hooks", "must start with https://"),
        ("https://user:pass@93.184.215.14/", "user name or password"),
        ("https://user@93.184.215.14/", "user name or password"),
        ("https:///hooks", "no host name"),
        ("https://93.184.215.14:99999/", "not valid"),
        ("https://[::1/", "not valid"),
    ],
)
def test_check_url_refuses_what_is_not_a_plain_https_url(url, reason):
    with pytest.raises(UnsafeURL, match=reason):
        check_url(url, allow_private=False)


def test_check_url_says_which_address_a_name_resolves_to(resolve):
    resolve({"shop.example": ["10.0.0.5"], "gone.example": []})
    with pytest.raises(UnsafeURL) as refused:
        check_url("https://shop.example/hooks", allow_private=False)
    assert str(refused.value) == (
        "shop.example resolves to 10.0.0.5, which is a private address: "
        "webhooks go to public addresses only"
    )
    with pytest.raises(UnsafeURL, match=r"gone\.example does not resolve"):
        check_url("https://gone.example/hooks", allow_private=False)


def test_check_url_refuses_a_name_with_one_private_address_among_public_ones(resolve):
    resolve({"shop.example": ["93.184.215.14", "2606:4700::1111", "fd00::5"]})
    with pytest.raises(UnsafeURL, match="fd00::5, which is a private address"):
        check_url("https://shop.example/", allow_private=False)


def test_check_url_accepts_public_addresses(resolve):
    resolve({"shop.example": ["93.184.215.14", "2606:4700::1111"]})
    check_url("https://93.184.215.14/", allow_private=False)
    check_url("https://[2606:4700:4700::1111]:8443/hooks?shop=1", allow_private=False)
    check_url("https://shop.example/webhooks", allow_private=False)


def test_check_url_allows_http_and_local_addresses_only_when_told(resolve):
    check_url("http://127.0.0.1:8000/hooks", allow_private=True)
    check_url("https://localhost/hooks", allow_private=True)
    check_url("http://10.0.0.5/", allow_private=True)
    # Never an address of no one, a group, or another scheme, even locally.
    for url in ("http://0.0.0.0:8000/", "http://224.0.0.1/"):
        with pytest.raises(UnsafeURL):
            check_url(url, allow_private=True)
    with pytest.raises(UnsafeURL, match="must start with https://"):
        check_url("ftp://127.0.0.1/", allow_private=True)


# --- send: one attempt --------------------------------------------------------------------
def test_a_2xx_is_delivered_with_the_body_and_headers_as_given(receiver):
    result = send(receiver.url("/hooks?shop=1"), PAYLOAD, HEADERS, timeout=5, allow_private=True)

    assert result.delivered and result.status_code == 200 and result.error == ""
    assert result.body == "thanks" and 0 < result.elapsed_ms < 5000
    [request] = receiver.requests
    assert request["path"] == "/hooks?shop=1" and request["body"] == PAYLOAD
    assert HEADERS.items() <= request["headers"].items()
    assert request["headers"]["User-Agent"] == "order-pipeline-webhooks/1"
    assert request["headers"]["Host"] == f"127.0.0.1:{receiver.port}"


def test_a_5xx_is_an_answer_not_a_delivery(receiver):
    result = send(receiver.url("/fail"), PAYLOAD, HEADERS, timeout=5, allow_private=True)

    assert (result.status_code, result.error, result.body) == (500, "", "boom")
    assert not result.delivered


def test_a_redirect_is_not_followed(receiver):
    result = send(receiver.url("/redirect"), PAYLOAD, HEADERS, timeout=5, allow_private=True)

    assert (result.status_code, result.error, result.delivered) == (302, "", False)
    assert [r["path"] for r in receiver.requests] == ["/redirect"]


def test_a_server_slower_than_the_timeout_is_a_timeout(receiver):
    started = time.monotonic()
    result = send(receiver.url("/slow"), PAYLOAD, HEADERS, timeout=0.5, allow_private=True)

    assert (result.status_code, result.error) == (None, "timeout")
    assert time.monotonic() - started < 1.5


def test_the_timeout_bounds_the_whole_attempt_not_each_read(receiver):
    """A server dripping a byte every 0.2 s never lets a single read time out."""
    started = time.monotonic()
    result = send(receiver.url("/drip"), PAYLOAD, HEADERS, timeout=1, allow_private=True)

    assert (result.status_code, result.error) == (None, "timeout")
    assert time.monotonic() - started < 2


def test_a_closed_port_is_connection_refused():
    result = send(
        f"http://127.0.0.1:{_closed_port()}/", PAYLOAD, HEADERS, timeout=5, allow_private=True
    )

    assert (result.status_code, result.error, result.delivered) == (
        None,
        "connection refused",
        False,
    )


def test_only_max_body_bytes_of_the_answer_are_read(receiver):
    result = send(
        receiver.url("/big"), PAYLOAD, HEADERS, timeout=5, allow_private=True, max_body=4096
    )

    assert result.delivered and result.body == "x" * 4096


def test_production_refuses_a_local_address_without_connecting(receiver):
    url = f"https://127.0.0.1:{receiver.port}/hooks"  # https, as production requires
    result = send(url, PAYLOAD, HEADERS, timeout=5, allow_private=False)

    assert (result.status_code, result.error) == (None, "unsafe address 127.0.0.1")
    assert receiver.requests == []


def test_production_refuses_http_at_delivery_too(resolve):
    resolve({"shop.example": ["93.184.215.14"]})
    result = send("http://shop.example/", PAYLOAD, HEADERS, timeout=5, allow_private=False)

    assert result.status_code is None
    assert result.error == "unsafe url: the URL must start with https://"


def test_a_name_rebound_to_a_local_address_after_registration_is_refused(resolve, receiver):
    """DNS rebinding: public when the shop registered, our loopback when the event goes out."""
    resolve({"shop.example": ["93.184.215.14"]})
    check_url(f"https://shop.example:{receiver.port}/hooks", allow_private=False)

    resolve({"shop.example": ["127.0.0.1"]})
    result = send(
        f"https://shop.example:{receiver.port}/hooks",
        PAYLOAD,
        HEADERS,
        timeout=5,
        allow_private=False,
    )

    assert (result.status_code, result.error) == (None, "unsafe address 127.0.0.1")
    assert receiver.requests == []


def test_the_address_actually_connected_to_is_checked(monkeypatch, receiver):
    """Whatever the resolver said, the socket's peer decides (here made to differ)."""
    monkeypatch.setattr(
        webhook_sender._BoundedSocket, "getpeername", lambda sock: ("10.9.9.9", receiver.port)
    )
    result = send(receiver.url("/hooks"), PAYLOAD, HEADERS, timeout=5, allow_private=True)

    assert (result.status_code, result.error) == (None, "unsafe address 10.9.9.9")
    assert receiver.requests == []


def test_a_name_that_does_not_resolve_is_an_error(resolve):
    resolve({"gone.example": []})
    result = send("https://gone.example/", PAYLOAD, HEADERS, timeout=5, allow_private=False)

    assert (result.status_code, result.error) == (None, "gone.example does not resolve")


# --- send over TLS ------------------------------------------------------------------------
def test_tls_is_verified_against_the_urls_host_name(resolve, tls_receiver, ca_file):
    resolve({"shop.test": ["127.0.0.1"]})
    url = tls_receiver.url("/hooks", host="shop.test")
    result = send(url, PAYLOAD, HEADERS, timeout=5, allow_private=True, ca_file=ca_file)

    assert result.delivered and result.body == "thanks"
    assert tls_receiver.server_names == ["shop.test"]  # SNI: the URL's name, not the address
    [request] = tls_receiver.requests
    assert request["headers"]["Host"] == f"shop.test:{tls_receiver.port}"
    assert request["body"] == PAYLOAD


def test_tls_to_a_literal_address_checks_the_address_in_the_certificate(tls_receiver, ca_file):
    result = send(
        tls_receiver.url("/hooks"), PAYLOAD, HEADERS, timeout=5, allow_private=True, ca_file=ca_file
    )

    assert result.delivered


def test_a_certificate_from_an_unknown_ca_is_refused(resolve, tls_receiver):
    resolve({"shop.test": ["127.0.0.1"]})
    url = tls_receiver.url("/hooks", host="shop.test")
    result = send(url, PAYLOAD, HEADERS, timeout=5, allow_private=True)

    assert result.status_code is None
    assert result.error.startswith("tls: ") and "certificate" in result.error
    assert tls_receiver.requests == []


def test_a_certificate_for_another_name_is_refused(resolve, tls_receiver, ca_file):
    resolve({"other.test": ["127.0.0.1"]})
    url = tls_receiver.url("/hooks", host="other.test")
    result = send(url, PAYLOAD, HEADERS, timeout=5, allow_private=True, ca_file=ca_file)

    assert result.status_code is None
    assert result.error.startswith("tls: ") and "other.test" in result.error
    assert tls_receiver.requests == []
