"""TLS to the backing services, on real processes: a private PostgreSQL that accepts TLS
connections only (pg_hba `hostssl`) and a private Redis that listens on a TLS port only
(`--port 0`), both with certificates from a test CA (trustme). An order placed through the
API runs to `completed` with the web server and a worker connecting to both over TLS that
checks the server; a client that trusts another CA is refused, and does not fall back to
plaintext."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis
import requests
import trustme

from tests.factories import order_payload
from tests.helpers import FAST_TIMINGS, wait_for
from tests.procs import HOST, RedisServer, timing_errors_under
from tests.test_database_outage import BIN, SETUP, PrivatePostgres, _manage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ORDER = order_payload(("MUG-001", 2))


class Certificates:
    """A test CA, and a server certificate it signed for 127.0.0.1 (the host the clients
    name, so verify-full and the Redis client's host name check pass)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.ca = trustme.CA(organization_name="orders test CA")
        server = self.ca.issue_cert(HOST, "localhost")
        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server.key"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        server.private_key_pem.write_to_path(str(self.key_file))
        self.key_file.chmod(0o600)


class TlsPostgres(PrivatePostgres):
    """The private PostgreSQL with ssl=on, which takes TCP connections over TLS only, and
    logs every connection (the proof that a refused client sent nothing in the clear)."""

    def __init__(self, certs: Certificates) -> None:
        super().__init__()
        for source, name in ((certs.cert_file, "server.pem"), (certs.key_file, "server.key")):
            shutil.copy(source, self.data / name)
            shutil.chown(self.data / name, "postgres", "postgres")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n"
                "log_connections = on\n"
            )
        # hostssl only: a plaintext TCP connection finds no entry and is refused.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n"
        )

    def log(self) -> str:
        return (self.dir / "log").read_text(errors="replace")


class TlsRedis(RedisServer):
    """The stack's private Redis on a TLS port only (`--port 0`: no plaintext listener)."""

    def __init__(self, *, log_dir: Path, certs: Certificates) -> None:
        super().__init__(log_dir=log_dir)
        self.certs = certs

    @property
    def url(self) -> str:
        # The CA is not here: the processes get BACKEND_CA_FILE, and their settings add it.
        return f"rediss://{HOST}:{self.port}/0?ssl_cert_reqs=required"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=self.port,
            ssl=True,
            ssl_cert_reqs="required",
            ssl_ca_certs=str(self.certs.ca_file),
            socket_timeout=2,
            socket_connect_timeout=2,
        )

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def _listen_args(self) -> list[str]:
        return [
            "--port",
            "0",  # no plaintext listener at all
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.certs.cert_file),
            "--tls-key-file",
            str(self.certs.key_file),
            "--tls-ca-cert-file",
            str(self.certs.ca_file),
            "--tls-auth-clients",
            "no",  # the server is checked; clients are not asked for certificates here
            "--loglevel",
            "verbose",  # it logs each failed handshake and its reason
        ]


@pytest.fixture
def certs(tmp_path):
    return Certificates(tmp_path / "tls")


@pytest.fixture
def other_certs(tmp_path):
    """A second CA, which signed nothing the servers present."""
    return Certificates(tmp_path / "other-tls")


@pytest.fixture
def postgres(certs):
    if not (BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.fail("PostgreSQL's server binaries and runuser are needed for this test")
    server = TlsPostgres(certs)
    try:
        server.start()
        with psycopg.connect(verified_url(server, certs, "postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE orders")
        yield server
    finally:
        server.destroy()


def verified_url(server: PrivatePostgres, certs: Certificates, database: str = "orders") -> str:
    return f"{server.url(database)}?sslmode=verify-full&sslrootcert={certs.ca_file}"


def database_url(server: PrivatePostgres, application_name: str) -> str:
    """What the processes get: verify-full, and the CA from BACKEND_CA_FILE."""
    return f"{server.url()}?sslmode=verify-full&application_name={application_name}"


@pytest.fixture
def tls_stack(stack_factory, postgres, certs, tmp_path):
    """The stack's web server and one worker, connecting over TLS to both private servers,
    with the test CA given once, as BACKEND_CA_FILE. Returns the stack and an API token."""
    assert timing_errors_under(FAST_TIMINGS) == []
    env = {
        **FAST_TIMINGS,
        "DATABASE_URL": database_url(postgres, "tls-web"),
        "BACKEND_CA_FILE": str(certs.ca_file),
    }
    stack = stack_factory(env=env, start=False)
    stack.redis = TlsRedis(log_dir=stack.log_dir, certs=certs)
    base = stack.env()
    _manage(base, "migrate", "--noinput")
    token = _manage(base, code=SETUP).splitlines()[-1]
    stack.start(workers=0)
    stack.start_worker(env={"DATABASE_URL": database_url(postgres, "tls-worker")})
    return stack, token


def place_and_wait(url: str, token: str) -> dict:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    response = session.post(f"{url}/api/orders/", json=ORDER, timeout=15)
    assert response.status_code == 201, response.text
    order_url = f"{url}/api/orders/{response.json()['id']}/"

    def finished() -> dict | None:
        order = session.get(order_url, timeout=15).json()
        return order if order["status"] in ("completed", "failed", "cancelled") else None

    return wait_for(finished, timeout=60, interval=0.3, what="the order to finish")


def test_an_order_runs_end_to_end_over_verified_tls_to_postgresql_and_redis(
    tls_stack, postgres, certs
):
    stack, token = tls_stack

    order = place_and_wait(stack.web_url, token)

    assert order["status"] == "completed", order
    assert [m["To"] for m in stack.smtp.messages] == ["buyer@example.com"]
    # PostgreSQL: every connection the web server and the worker hold is encrypted (the
    # server's own view, pg_stat_ssl), and both kept one open after the order.
    with psycopg.connect(verified_url(postgres, certs)) as conn:
        rows = conn.execute(
            "SELECT a.application_name, s.ssl, s.version FROM pg_stat_activity a "
            "JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'tls-%%'"
        ).fetchall()
        assert {name for name, _, _ in rows} == {"tls-web", "tls-worker"}
        assert all(encrypted and version.startswith("TLS") for _, encrypted, version in rows)
        # The server itself refuses a connection without TLS (no pg_hba.conf entry for it).
        with pytest.raises(psycopg.OperationalError, match="no encryption"):
            psycopg.connect(f"{postgres.url()}?sslmode=disable", connect_timeout=5)
    # Redis: no plaintext listener at all, and the broker, the locks and the cache of the
    # pipeline went through the TLS port: the worker's queue reads, the step locks, the
    # web server's throttle counters.
    client = stack.redis.client()
    assert client.config_get("port") == {"port": "0"}
    assert client.info("clients")["connected_clients"] >= 3  # web, worker, this one
    commands = client.info("commandstats")
    for command in ("cmdstat_lpush", "cmdstat_brpop", "cmdstat_set", "cmdstat_evalsha"):
        assert command in commands, sorted(commands)
    with pytest.raises(redis.ConnectionError):  # a plaintext client gets no answer
        redis.Redis(host=HOST, port=stack.redis.port, socket_timeout=2).ping()


def test_a_client_that_trusts_another_ca_is_refused_and_sends_nothing_in_the_clear(
    tls_stack, postgres, other_certs
):
    """The same servers, presenting certificates the other CA did not sign: PostgreSQL's
    `manage.py migrate --check` fails on the certificate; a worker given the other CA never
    becomes ready and keeps retrying on the certificate. Neither retries in plaintext: the
    servers log the clients' TLS alerts, and no connection authorised for them, and no
    plaintext request on Redis's TLS port."""
    stack, _ = tls_stack
    other = {**stack.env(), "BACKEND_CA_FILE": str(other_certs.ca_file)}
    other["DATABASE_URL"] = database_url(postgres, "tls-other-ca")

    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--check"],  # reads the migrations table
        cwd=Path(__file__).resolve().parent.parent,
        env=other,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode != 0
    assert "certificate verify failed" in result.stderr, result.stderr[-2000:]
    log = postgres.log()
    assert "alert unknown ca" in log
    assert "application_name=tls-other-ca" not in log  # never authorised, with TLS or without
    assert "no encryption" not in log  # and never tried without TLS

    redis_log_before = len(stack.redis.proc.log())
    worker = stack.start_worker(wait=False, env=other)
    wait_for(
        lambda: worker.log().count("certificate verify failed") >= 2,
        timeout=60,
        what=lambda: f"the worker's certificate errors:\n{worker.tail()}",
    )
    time.sleep(1)
    assert worker.alive and f"{worker.nodename} ready." not in worker.log()
    assert "Cannot connect to rediss://" in worker.log()
    redis_log = stack.redis.proc.log()[redis_log_before:]
    assert "alert unknown ca" in redis_log, redis_log[-2000:]
    assert "wrong version number" not in redis_log  # what a plaintext request would cause
    stack.kill_worker(worker)
