"""TLS to the backing services: what each client needs to verify its server, and what counts
as a plaintext connection or a disabled certificate check (orders.E003, orders/checks.py).

Each connection carries its TLS in its own URL, in the form its client library reads:
PostgreSQL `sslmode=verify-full` (libpq), Redis `rediss://...?ssl_cert_reqs=required`
(redis-py and kombu alike, so the cache, the locks and the broker read the same URL), RabbitMQ
`amqps://`. BACKEND_CA_FILE, when set, is the CA bundle they trust where the URL names none;
without it each client trusts the system's CAs. Nothing here ever lowers a check: a URL that
asks for less is reported, not corrected (README, "TLS to the backing services").
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

POSTGRES_ENGINES = frozenset(
    {"django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis"}
)
# What redis-py and kombu read as "verify the server's certificate".
CERT_REQUIRED_NAMES = frozenset({"required", "cert_required"})


def _query(url: str) -> dict[str, str]:
    return {name: values[-1] for name, values in parse_qs(urlsplit(url).query).items()}


def redis_url(url: str, ca_file: str) -> str:
    """A rediss:// URL with `ssl_ca_certs=ca_file` added when it names no CA of its own;
    any other URL unchanged. redis-py (cache, locks) and kombu (broker) both read it there."""
    parts = urlsplit(url)
    if not ca_file or parts.scheme != "rediss" or "ssl_ca_certs" in _query(url):
        return url
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({"ssl_ca_certs": ca_file})))


def database_tls(database: dict[str, Any], ca_file: str) -> dict[str, Any]:
    """PostgreSQL: `sslrootcert=ca_file` in the connection's options when DATABASE_URL names
    none (libpq would otherwise look in ~/.postgresql/root.crt)."""
    if ca_file and database.get("ENGINE") in POSTGRES_ENGINES:
        database.setdefault("OPTIONS", {}).setdefault("sslrootcert", ca_file)
    return database


def broker_use_ssl(broker_url: str, ca_file: str) -> dict[str, Any] | bool:
    """Celery's broker_use_ssl for an amqps:// broker: the server's certificate is required,
    checked against ca_file (the system's CAs without one) and against the URL's host name
    (kombu fills in a server_hostname given as None). False for any other broker: a Redis
    broker reads its TLS from its rediss:// URL, which kombu lets override this setting."""
    if urlsplit(broker_url.split(";", 1)[0]).scheme.lower() != "amqps":
        return False
    return {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": ca_file or None, "server_hostname": None}


def database_problem(name: str, database: dict[str, Any]) -> str | None:
    """Why this database connection is not verified TLS, or None. Only PostgreSQL travels
    over a network (SQLite is a local file)."""
    if database.get("ENGINE") not in POSTGRES_ENGINES:
        return None
    sslmode = database.get("OPTIONS", {}).get("sslmode")
    if sslmode == "verify-full":
        return None
    said = (
        f"sslmode={sslmode}"
        if sslmode
        else "no sslmode (libpq's default, prefer, falls back to plaintext)"
    )
    return (
        f"{name} connects to PostgreSQL with {said}: add sslmode=verify-full to its URL "
        "(encrypted, and the server's certificate and host name checked)"
    )


def redis_problem(name: str, url: str) -> str | None:
    """Why this Redis URL is not verified TLS, or None. A unix socket never leaves the host."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return None
    shown = urlunsplit(parts._replace(netloc=parts.hostname or "", query=""))  # no password
    if parts.scheme != "rediss":
        return f"{name} ({shown}) is plaintext: use rediss:// with ssl_cert_reqs=required"
    query = _query(url)
    cert_reqs = query.get("ssl_cert_reqs", "")
    if cert_reqs.lower() not in CERT_REQUIRED_NAMES:
        said = f"ssl_cert_reqs={cert_reqs}" if cert_reqs else "no ssl_cert_reqs"
        return (
            f"{name} ({shown}) has {said}: add ssl_cert_reqs=required, or the server's "
            "certificate is not checked"
        )
    if query.get("ssl_check_hostname", "").lower() == "false":
        return f"{name} ({shown}) has ssl_check_hostname=false: the server's name is not checked"
    return None


def amqp_problem(name: str, url: str, use_ssl: Any) -> str | None:
    """Why this RabbitMQ broker is not verified TLS, or None."""
    for one in url.split(";"):  # failover: every broker in the list
        parts = urlsplit(one)
        shown = urlunsplit(parts._replace(netloc=parts.hostname or "", query=""))
        if parts.scheme.lower() != "amqps":
            return f"{name} ({shown}) is plaintext: use amqps://"
    if not isinstance(use_ssl, dict) or use_ssl.get("cert_reqs") != ssl.CERT_REQUIRED:
        return f"{name}: the broker's certificate is not required (CELERY_BROKER_USE_SSL)"
    return None
