"""One webhook POST to a shop's URL, without ever becoming a way into our network.

A shop's endpoint URL is attacker-controlled input (server-side request forgery): a URL whose
host is, or resolves to, a loopback, private, link-local (the cloud metadata address
169.254.169.254), multicast or reserved address would let a shop make us call our own
services. `check_url` refuses such URLs at registration; `send` resolves the host again at every
attempt (DNS can change in between: "DNS rebinding"), connects itself to an address that passes
the same rule, checks the socket's peer, and only then speaks HTTP over that socket, so no
library resolves the name a second time. No redirect is followed, the body is read up to a
small limit, and the whole attempt, connect to last byte, fits in one timeout.

Odd spellings of an address (2130706433, 0177.0.0.1, 127.1, ::ffff:127.0.0.1) need no parser
of our own: getaddrinfo turns them into the address they mean, and that address is checked.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import TYPE_CHECKING, TypeAlias, cast
from urllib.parse import urlsplit

import certifi

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

USER_AGENT = "order-pipeline-webhooks/1"
_NAT64 = IPv6Network("64:ff9b::/96")  # an IPv4 address in its last 32 bits (RFC 6052)
_SHARED = IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)


class UnsafeURL(ValueError):
    """The URL may not be called: message says why in words a shop understands."""


@dataclass(frozen=True)
class SendResult:
    status_code: int | None  # None when no HTTP answer came (timeout, refused, unsafe, TLS)
    elapsed_ms: float
    error: str  # "" on any HTTP answer (a 3xx or 5xx included); else a short reason
    body: str  # the response body, decoded leniently, at most max_body bytes of it

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def check_url(url: str, *, allow_private: bool) -> None:
    """Raise UnsafeURL unless `url` may receive webhooks: https (http too when allow_private,
    for local and test settings), no user:password@, and every address its host resolves to
    public (any unicast address when allow_private)."""
    host, port, _ = _parse(url, allow_private=allow_private)
    for ip, _sockaddr in _resolve(host, port):
        if reason := _refusal(ip, allow_private=allow_private):
            shown = host if _is_literal(host, ip) else f"{host} resolves to {ip}, which"
            raise UnsafeURL(f"{shown} is a {reason} address: webhooks go to public addresses only")


def send(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    allow_private: bool,
    max_body: int = 4096,
    ca_file: str | None = None,
) -> SendResult:
    """One POST attempt, within `timeout` seconds from connect to the last byte read. Network
    problems, an unsafe URL or address and TLS failures come back as SendResult.error; a
    redirect is an answer like any other (not followed). Raises only on programming errors."""
    started = time.monotonic()
    deadline = started + timeout

    def result(status: int | None, error: str, data: bytes = b"") -> SendResult:
        elapsed_ms = (time.monotonic() - started) * 1000
        return SendResult(status, elapsed_ms, error, data.decode("utf-8", errors="replace"))

    try:
        host, port, target = _parse(url, allow_private=allow_private)
    except UnsafeURL as exc:
        return result(None, f"unsafe url: {exc}")
    try:
        addresses = _resolve(host, port)
    except UnsafeURL as exc:  # "... does not resolve"
        return result(None, str(exc))
    # Every address must pass, as at registration: a name answering with one public and one
    # private address is not a shop's endpoint.
    for ip, _sockaddr in addresses:
        if _refusal(ip, allow_private=allow_private):
            return result(None, f"unsafe address {ip}")
    https = urlsplit(url).scheme == "https"
    default_port = 443 if https else 80
    try:
        sock = _connect(addresses, deadline, allow_private=allow_private)
    except UnsafeURL as exc:
        return result(None, str(exc))
    except TimeoutError:
        return result(None, "timeout")
    except OSError as exc:
        return result(None, _describe(exc))
    # Plain HTTPConnection for https too: the TLS is ours (HTTPSConnection would build, and
    # load CAs into, a context of its own on every call), and so is the Host header.
    connection = http.client.HTTPConnection(host, port)
    try:
        if https:
            sock = _tls_context(ca_file).wrap_socket(
                sock, server_hostname=host, do_handshake_on_connect=False
            )
            cast(_BoundedTLSSocket, sock).deadline = deadline
            sock.settimeout(_left(deadline))
            sock.do_handshake()
        connection.sock = sock  # http.client speaks over our socket: it never connects itself
        shown_host = f"[{host}]" if ":" in host else host
        if port != default_port:
            shown_host += f":{port}"
        request_headers = {"User-Agent": USER_AGENT, **headers, "Host": shown_host}
        sock.settimeout(_left(deadline))
        connection.request("POST", target, body=body, headers=request_headers)
        response = connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:  # OSError: timeouts and TLS too
        connection.close()
        sock.close()
        return result(None, _describe(exc))
    data = b""
    try:
        while len(data) < max_body and (chunk := response.read(max_body - len(data))):
            data += chunk
    except (OSError, http.client.HTTPException):
        # The status line came: that is the shop's answer. A body cut short by the deadline or
        # a dropped connection is kept as far as it came.
        pass
    finally:
        connection.close()
    return result(response.status, "", data)


def _parse(url: str, *, allow_private: bool) -> tuple[str, int, str]:
    """(host, port, path and query) of a URL that may be tried, or UnsafeURL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"the URL is not valid ({exc})") from exc
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed:
        raise UnsafeURL("the URL must start with https://")
    if "@" in parts.netloc:
        raise UnsafeURL("the URL may not contain a user name or password")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host name")
    if port == 0:
        raise UnsafeURL("the URL's port must be between 1 and 65535")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80), target


_IP: TypeAlias = IPv4Address | IPv6Address


def _resolve(host: str, port: int) -> list[tuple[_IP, tuple]]:
    """Every (address, sockaddr) the host resolves to, IPv4 and IPv6, as connect() takes it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: not a valid IDNA name
        raise UnsafeURL(f"{host} does not resolve") from exc
    if not infos:
        raise UnsafeURL(f"{host} does not resolve")
    return [(ip_address(sockaddr[0]), sockaddr) for _, _, _, _, sockaddr in infos]


def _refusal(ip: _IP, *, allow_private: bool) -> str:
    """Why the address may not be called ("" if it may): a word for the kind of address."""
    if isinstance(ip, IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address: it decides.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and (reason := _refusal(embedded, allow_private=allow_private)):
            return reason
    if ip.is_unspecified:  # 0.0.0.0 and :: reach this machine
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if allow_private:
        return ""
    for reason, match in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),  # 169.254.169.254, the cloud metadata service
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("site-local", isinstance(ip, IPv6Address) and ip.is_site_local),  # is_global misses it
        ("carrier-grade NAT", ip in _SHARED),
        ("non-public", not ip.is_global),
    ):
        if match:
            return reason
    return ""


def _connect(
    addresses: list[tuple[_IP, tuple]], deadline: float, *, allow_private: bool
) -> socket.socket:
    """A socket connected to the first address that answers, checked once more by its peer
    address: what the kernel actually connected to is what passes the rule."""
    error: OSError = ConnectionError("no address")
    for ip, sockaddr in addresses:
        sock = _BoundedSocket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
        sock.deadline = deadline
        try:
            sock.settimeout(_left(deadline))
            sock.connect(sockaddr)
            peer = ip_address(sock.getpeername()[0])
        except OSError as exc:
            sock.close()
            error = exc
            if isinstance(exc, TimeoutError):
                break  # the time is spent: no other address gets a chance
            continue
        if peer != ip or _refusal(peer, allow_private=allow_private):
            sock.close()
            raise UnsafeURL(f"unsafe address {peer}")
        return sock
    raise error


def _is_literal(host: str, ip: _IP) -> bool:
    """Is the host this address, written the usual way? (2130706433 "resolves to" 127.0.0.1.)"""
    try:
        return ip_address(host) == ip
    except ValueError:
        return False


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's time is up")
    return left


# A socket's timeout bounds each recv, and a server dripping a byte at a time would stretch an
# attempt without end: these sockets give each recv only what is left of the whole attempt.
class _BoundedSocket(socket.socket):
    deadline: float

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(_left(self.deadline))
        return super().recv_into(buffer, nbytes, flags)


class _BoundedTLSSocket(ssl.SSLSocket):
    deadline: float

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        self.settimeout(_left(self.deadline))
        return super().recv_into(buffer, nbytes, flags)


@functools.cache
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificates checked, and against the URL's host name, always. The shops' servers carry
    public certificates: Mozilla's CAs (certifi, as requests uses) unless a CA file is given."""
    context = ssl.create_default_context(cafile=ca_file or certifi.where())
    context.sslsocket_class = _BoundedTLSSocket
    return context


def _describe(exc: BaseException) -> str:
    """A short reason for the delivery log."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without an answer"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.HTTPException):
        return f"http: {exc.__class__.__name__}"
    if isinstance(exc, OSError):
        return f"network: {exc.strerror or exc}"
    return exc.__class__.__name__
