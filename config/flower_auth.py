"""An authenticating proxy in front of Flower: every path needs the credentials.

Flower 2.2's --basic-auth guards its pages and API but not /metrics and /healthcheck, which
show the task volumes and names to anyone who can reach the port. So Flower listens on a
private address and this proxy, the only public entry, asks Basic credentials
(FLOWER_BASIC_AUTH="user:password", several separated by commas) for every request before
passing it on, the Authorization header included (Flower may check it again).

    python -m config.flower_auth --port 5555 --upstream http://127.0.0.1:5556
"""

from __future__ import annotations

import argparse
import base64
import hmac
import os
from typing import Any

from tornado import httpclient, ioloop, web

# Hop-by-hop headers (RFC 9110, 7.6.1) belong to one connection, not to the message.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


def credentials_from_env() -> list[str]:
    pairs = [p.strip() for p in os.environ.get("FLOWER_BASIC_AUTH", "").split(",") if p.strip()]
    if not pairs or any(":" not in p for p in pairs):
        raise SystemExit("FLOWER_BASIC_AUTH must be user:password (comma-separated for several)")
    return pairs


def authorized(header: str | None, allowed: list[str]) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        sent = base64.b64decode(header[6:], validate=True).decode()
    except ValueError:
        return False
    # compare_digest with every pair, not stopping at a match: the time taken tells nothing.
    matches = [hmac.compare_digest(sent.encode(), pair.encode()) for pair in allowed]
    return any(matches)


class ProxyHandler(web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")

    def initialize(self, upstream: str, allowed: list[str]) -> None:
        self.upstream = upstream.rstrip("/")
        self.allowed = allowed

    async def _forward(self) -> None:
        if not authorized(self.request.headers.get("Authorization"), self.allowed):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Basic realm="flower"')
            self.finish("Authentication required")
            return
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in HOP_BY_HOP}
        headers.pop("Host", None)
        request = httpclient.HTTPRequest(
            self.upstream + self.request.uri,
            method=self.request.method,
            headers=headers,
            body=self.request.body if self.request.method in ("POST", "PUT", "PATCH") else None,
            follow_redirects=False,
            request_timeout=60,
        )
        response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code == 599:  # no answer from Flower
            self.set_status(502)
            self.finish("Flower is unreachable")
            return
        self.set_status(response.code, response.reason)
        for name, value in response.headers.get_all():
            if name.lower() not in HOP_BY_HOP:
                self.add_header(name, value)
        self.finish(response.body or b"")

    async def get(self, *args: Any) -> None:
        await self._forward()

    head = post = put = delete = patch = options = get


def make_app(*, upstream: str, allowed: list[str]) -> web.Application:
    return web.Application([(r"/.*", ProxyHandler, {"upstream": upstream, "allowed": allowed})])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5555)
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--upstream", default="http://127.0.0.1:5556")
    args = parser.parse_args()
    make_app(upstream=args.upstream, allowed=credentials_from_env()).listen(
        args.port, address=args.address
    )
    ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
