"""Real processes for the slow tests: a private Redis, the web server (gunicorn), Celery
workers and beat, and an SMTP server that runs inside the test process.

Every child runs in its own process group, so that killing the group also kills what it
forked (a prefork worker's pool children, gunicorn's workers). Every child gets the same
environment: the pytest-django test database (the processes only see committed data, so
the tests use `transactional_db`), the private Redis, the web server as the sandbox
providers, the SMTP server, and the timing overrides of the test. Whatever happens in the
test, `Stack.stop()` kills every group, reaps it and closes the children's database
connections, so that the test database can be flushed and dropped.

    def test_something(stack_factory):
        stack = stack_factory(env={"SANDBOX_LATENCY_MS": "500"}, workers=2, beat=True)
        stack.web.url, stack.smtp.messages, stack.kill_worker(stack.workers[0]), ...
"""

from __future__ import annotations

import email
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path

import pytest
import redis
import requests

from config.broker import (
    BROKER_ERRORS,
    ORDER_QUEUES,
    is_amqp,
    order_queues,
    queue_depths,
    transport_options,
)
from tests import rabbitmq
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
HOST = "127.0.0.1"

# Settings read from the environment that the harness decides for its children; whatever the
# test runner's own environment says about them must not leak into the processes.
_OWN_PREFIXES = (
    "DJANGO_",
    "DATABASE_",
    "CELERY_",
    "EMAIL_",
    "SANDBOX_",
    "PROVIDER_",
    "TASK_",
    "ORDER_",
    "THROTTLE_",
    "IDEMPOTENCY_",
    "SENTRY_",
    "STRIPE_",
    "EASYPOST_",
    "SHIPPING_",
    "WEBHOOK_",
)
_OWN_NAMES = {
    "PROMETHEUS_MULTIPROC_DIR",
    "REDIS_URL",
    "LOCK_REDIS_URL",
    "TEST_DATABASE_NAME",
    "PAYMENT_GATEWAY",
    "SHIPPING_CARRIER",
    "API_MAX_BODY_BYTES",
    "DEFAULT_FROM_EMAIL",
    "LOG_LEVEL",
}


# Celery 5.7 may hang in the warm shutdown that follows an `Unrecoverable error` instead of
# exiting (README, "Known limits"), answering no ping: a supervisor's liveness check restarts
# such a worker. The supervisor here does the same once the warm shutdown has had this long
# to finish on its own.
UNRECOVERABLE = "Unrecoverable error"
HUNG_AFTER = 30.0


class ProcessFailed(RuntimeError):
    """A child process exited or did not become ready in time."""


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def children_of(pid: int) -> list[int]:
    """Direct children of a process (a prefork worker's pool processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


class Proc:
    """One child process (and its process group), its output in a log file."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen | None = None
        self.nodename = ""  # a worker's Celery node name
        self.unrecoverable_at: float | None = None  # when a worker logged UNRECOVERABLE
        self.spec: dict = {}  # a worker's start_worker() arguments

    def start(self) -> Proc:
        with open(self.log_path, "ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_ready(self, ready: Callable[[], bool], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive:
                raise ProcessFailed(
                    f"{self.name} exited with code {self.popen.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise ProcessFailed(f"{self.name} not ready after {timeout}s:\n{self.tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it. Safe to call twice."""
        if self.popen is None:
            return
        pgid = self.popen.pid  # start_new_session: the child leads its own group
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass
        # Grandchildren (pool processes) are reaped by init; wait until none is left running.
        deadline = time.monotonic() + 10
        while members := _group_members(pgid):
            if time.monotonic() > deadline:
                raise ProcessFailed(f"{self.name}: processes {members} survived SIGKILL")
            time.sleep(0.05)


class RedisServer:
    """A private redis-server with nothing on disk: stopping it loses every queue and lock."""

    def __init__(self, *, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_dir = log_dir
        self.proc: Proc | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _ping(self) -> bool:
        try:
            return bool(
                redis.Redis(
                    host=HOST, port=self.port, socket_timeout=1, socket_connect_timeout=1
                ).ping()
            )
        except redis.RedisError:
            return False

    def _listen_args(self) -> list[str]:
        """How it listens: plain TCP on `port` (a TLS Redis overrides this)."""
        return ["--port", str(self.port)]

    def start(self) -> None:
        argv = [
            "redis-server",
            *self._listen_args(),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.log_dir),
        ]
        self.proc = Proc("redis", argv, env=dict(os.environ), log_dir=self.log_dir).start()
        self.proc.wait_ready(self._ping, timeout=15)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def restart(self, *, down_for: float = 1.0) -> None:
        """Kill it (everything in it is lost) and start a new one on the same port."""
        self.stop()
        time.sleep(down_for)
        self.start()
        self.restarts += 1


class SmtpServer:
    """A real SMTP server (aiosmtpd) in this process that keeps every message it receives.
    It can be stopped (connections are refused) and started again on the same port.
    `on_accept`, if set, is called with each message before the server answers 250: a test
    injects a fault into the moment between the server's acceptance and the sender's record
    of it."""

    def __init__(self) -> None:
        import logging

        logging.getLogger("mail.log").setLevel(logging.WARNING)  # a line per SMTP command otherwise
        self.port = free_port()
        self._messages: list[Message] = []
        self._lock = threading.Lock()
        self.controller = self._controller()
        self.on_accept: Callable[[Message], None] | None = None

    def _controller(self):
        from aiosmtpd.controller import Controller

        return Controller(self, hostname=HOST, port=self.port)

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's handler hook
        message = email.message_from_bytes(envelope.original_content or envelope.content)
        with self._lock:
            self._messages.append(message)
        if self.on_accept is not None:
            self.on_accept(message)
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]

    def start(self) -> None:
        try:
            self.controller.start()
        except RuntimeError:  # stopped before: a controller's event loop does not restart
            self.controller = self._controller()
            self.controller.start()

    def stop(self) -> None:
        try:
            self.controller.stop()
        except AssertionError:  # never started
            pass


class Stack:
    """Redis, SMTP, the web server, workers and beat for one test. Use `stop()` (or the
    `stack_factory` fixture, which always does) to tear everything down."""

    def __init__(
        self,
        *,
        db_name: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        broker: str = "redis",
        rabbitmq_url: str = "",
    ) -> None:
        self.db_name = db_name
        self.log_dir = log_dir
        self.overrides = {k: str(v) for k, v in (env or {}).items()}
        # Names the children's database connections, so that teardown closes exactly those.
        self.app_name = f"procs-{uuid.uuid4().hex[:8]}"
        self.redis = RedisServer(log_dir=log_dir)
        # The broker: the private Redis, or a virtual host of this stack's own on the local
        # RabbitMQ (Redis still holds the locks, the cache and the throttles).
        self.broker = broker
        self.vhost = f"stack-{self.app_name}" if broker == "rabbitmq" else ""
        self.rabbitmq_url = rabbitmq_url
        self.smtp = SmtpServer()
        self.web_port = free_port()
        self.web: Proc | None = None
        self.beat: Proc | None = None
        self.flower: list[Proc] = []  # Flower and its authenticating proxy
        self.workers: list[Proc] = []
        self.killed_workers: list[Proc] = []
        self.crashed_workers: list[Proc] = []  # exited or hung; see replace_crashed_workers
        self._worker_seq = 0
        self._client = None

    # --- environment ---------------------------------------------------------------------
    @property
    def web_url(self) -> str:
        return f"http://{HOST}:{self.web_port}"

    @property
    def broker_url(self) -> str:
        if self.vhost:
            return f"{self.rabbitmq_url}/{self.vhost}"
        return self.redis.url

    @property
    def metrics_dir(self) -> Path:
        path = self.log_dir / "prometheus"
        path.mkdir(exist_ok=True)
        return path

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _OWN_NAMES and not k.startswith(_OWN_PREFIXES)
        }
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "config.settings.test",
                "DATABASE_URL": f"postgres://postgres@{HOST}:5432/{self.db_name}?application_name={self.app_name}",
                "REDIS_URL": self.redis.url,
                "CELERY_BROKER_URL": self.broker_url,
                "STRIPE_API_BASE": f"{self.web_url}/sandbox/stripe",
                "EASYPOST_API_BASE": f"{self.web_url}/sandbox/easypost/v2",
                "EMAIL_HOST": HOST,
                "EMAIL_PORT": str(self.smtp.port),
                "PYTHONUNBUFFERED": "1",
                # The stack's own metrics: its web and worker processes, nobody else's.
                "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
                # Many orders from few users: the API's throttle is not what these tests are about.
                "THROTTLE_ORDER_CREATE_RATE": "100000/min",
            }
        )
        env.update(self.overrides)
        return env

    # --- processes -----------------------------------------------------------------------
    @property
    def access_log(self) -> Path:
        return self.log_dir / "web-access.log"

    def _web_proc(self, *, workers: int, threads: int) -> Proc:
        # gthread: a slow sandbox answer (tok_timeout_after_success sleeps) holds one thread,
        # not a whole worker.
        argv = [
            str(BIN / "gunicorn"),
            "config.wsgi:application",
            "--bind",
            f"{HOST}:{self.web_port}",
            "--worker-class",
            "gthread",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--timeout",
            "60",
            "--graceful-timeout",
            "5",
            "--log-level",
            "warning",
            "--access-logfile",
            str(self.access_log),
        ]
        return Proc("web", argv, env=self.env(), log_dir=self.log_dir)

    def requests_to(self, method: str, path: str) -> int:
        """How many requests the web server has answered for `method path` (its access log):
        e.g. how often the workers called the sandbox gateway."""
        try:
            log = self.access_log.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return log.count(f'"{method} {path} HTTP/') + log.count(f'"{method} {path}?')

    def _web_ready(self) -> bool:
        try:
            return requests.get(f"{self.web_url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _worker_proc(
        self, *, concurrency: int, queues: str = "", env: dict[str, str] | None = None
    ) -> Proc:
        self._worker_seq += 1
        name = f"w{self._worker_seq}"
        argv = [
            str(BIN / "celery"),
            "-A",
            "config",
            "worker",
            "--pool",
            "prefork",
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--loglevel",
            "INFO",
            *(["-Q", queues] if queues else []),  # all the orders' queues unless named
        ]
        proc = Proc(name, argv, env={**self.env(), **(env or {})}, log_dir=self.log_dir)
        proc.nodename = f"{name}@{socket.gethostname()}"
        # What a supervisor would start again in its place (replace_crashed_workers).
        proc.spec = {"concurrency": concurrency, "queues": queues, "env": env}
        return proc

    @staticmethod
    def _worker_ready(proc: Proc) -> Callable[[], bool]:
        return lambda: f"{proc.nodename} ready." in proc.log()

    def start(
        self,
        *,
        workers: int = 1,
        concurrency: int = 2,
        beat: bool = False,
        web_workers: int = 2,
        web_threads: int = 8,
        timeout: float = 60,
    ) -> Stack:
        """Start Redis and SMTP, then the web server, workers and beat side by side, and wait
        until each is ready."""
        self.redis.start()
        if self.vhost:
            rabbitmq.vhost_create(self.vhost)
        self.smtp.start()
        self.web = self._web_proc(workers=web_workers, threads=web_threads).start()
        started = [self._worker_proc(concurrency=concurrency).start() for _ in range(workers)]
        self.workers.extend(started)
        if beat:
            self.beat = Proc(
                "beat",
                [
                    str(BIN / "celery"),
                    "-A",
                    "config",
                    "beat",
                    "--loglevel",
                    "INFO",
                    "--schedule",
                    str(self.log_dir / "beat-schedule"),
                ],
                env=self.env(),
                log_dir=self.log_dir,
            ).start()
        self.web.wait_ready(self._web_ready, timeout=timeout)
        for proc in started:
            proc.wait_ready(self._worker_ready(proc), timeout=timeout)
        if self.beat is not None:
            self.beat.wait_ready(lambda: "beat: Starting..." in self.beat.log(), timeout=timeout)
        return self

    def start_flower(
        self,
        *,
        credentials: str = "user:pass",
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> str:
        """Flower on a private port behind the project's authenticating proxy, as the
        Procfile runs them, with `env` on top of the stack's environment (e.g. a broker user
        of its own); returns the proxy's URL. Started before the orders it should see:
        Flower learns of tasks from their events."""
        private, public = free_port(), free_port()
        env = {**self.env(), **(env or {}), "FLOWER_BASIC_AUTH": credentials}
        flower = Proc(
            "flower",
            [
                str(BIN / "celery"),
                "-A",
                "config",
                "flower",
                f"--address={HOST}",
                f"--port={private}",
                f"--basic-auth={credentials}",
            ],
            env=env,
            log_dir=self.log_dir,
        ).start()
        proxy = Proc(
            "flowerauth",
            [
                str(BIN / "python"),
                "-m",
                "config.flower_auth",
                "--address",
                HOST,
                "--port",
                str(public),
                "--upstream",
                f"http://{HOST}:{private}",
            ],
            env=env,
            log_dir=self.log_dir,
        ).start()
        self.flower += [flower, proxy]
        user, password = credentials.split(":", 1)

        def ready() -> bool:
            try:
                url = f"http://{HOST}:{public}/healthcheck"
                return requests.get(url, auth=(user, password), timeout=2).status_code == 200
            except requests.RequestException:
                return False

        proxy.wait_ready(ready, timeout=timeout)
        return f"http://{HOST}:{public}"

    def start_worker(
        self,
        *,
        concurrency: int = 2,
        wait: bool = True,
        timeout: float = 60,
        queues: str = "",
        env: dict[str, str] | None = None,
    ) -> Proc:
        """A worker (all the orders' queues unless `queues` names some), with `env` on top of
        the stack's environment (e.g. its links through a proxy)."""
        proc = self._worker_proc(concurrency=concurrency, queues=queues, env=env).start()
        self.workers.append(proc)
        if wait:
            proc.wait_ready(self._worker_ready(proc), timeout=timeout)
        return proc

    def kill_worker(self, proc: Proc) -> None:
        """SIGKILL a worker and its pool children, as a crashed machine would."""
        proc.kill()
        self.workers.remove(proc)
        self.killed_workers.append(proc)

    def replace_crashed_workers(self) -> list[Proc]:
        """What a process supervisor (systemd, Kubernetes) does: a worker that exited by
        itself, or that its liveness check finds hung, is replaced by a new one. Returns the
        workers found dead."""
        now = time.monotonic()
        for proc in self.workers:
            if proc.alive and proc.unrecoverable_at is None and UNRECOVERABLE in proc.log():
                proc.unrecoverable_at = now
        crashed = [
            proc
            for proc in self.workers
            if not proc.alive
            or (proc.unrecoverable_at is not None and now - proc.unrecoverable_at > HUNG_AFTER)
        ]
        for proc in crashed:
            proc.kill()  # reap it, and whatever it left behind in its group
            self.workers.remove(proc)
            self.crashed_workers.append(proc)
            self.start_worker(wait=False, **proc.spec)
        return crashed

    @contextmanager
    def supervising(self, *, interval: float = 0.5) -> Iterator[None]:
        """While the block runs, replace every worker that exits by itself, as systemd or
        Kubernetes would (celery 5.7: a worker busy with an acks_late task exits when its
        Redis broker goes away, at a moment of its own choosing)."""
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(interval):
                self.replace_crashed_workers()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join(timeout=10)

    def pool_pids(self, proc: Proc) -> list[int]:
        return children_of(proc.pid)

    # --- talking to the processes ----------------------------------------------------------
    @property
    def celery(self):
        """A Celery client on the private Redis, to send tasks by name and inspect workers."""
        if self._client is None:
            from celery import Celery

            self._client = Celery(
                f"client-{self.app_name}", broker=self.broker_url, set_as_current=False
            )
            from django.conf import settings

            # Routed and declared as the project does: each task to its step's queue.
            self._client.conf.update(
                broker_connection_retry_on_startup=True,
                broker_transport_options=transport_options(self.broker_url, redis={}),
                task_ignore_result=True,
                task_queues=order_queues(
                    self.broker_url, delivery_limit=settings.ORDER_QUEUE_DELIVERY_LIMIT
                ),
                task_routes=settings.CELERY_TASK_ROUTES,
                task_default_queue=settings.CELERY_TASK_DEFAULT_QUEUE,
            )
        return self._client

    def active_tasks(self, proc: Proc, *, timeout: float = 1.0) -> list[dict]:
        """The tasks a worker runs now, each with the pid of the pool process running it."""
        for attempt in range(2):
            try:
                replies = self.celery.control.inspect(
                    destination=[proc.nodename], timeout=timeout
                ).active()
                return (replies or {}).get(proc.nodename, [])
            except BROKER_ERRORS:
                if attempt:
                    raise
                # The pooled connection died with a Redis restart: start over with a new client.
                self._client.close()
                self._client = None
        return []

    def busiest_worker(self, *, timeout: float = 0.5) -> tuple[Proc | None, int]:
        """The live worker running the most tasks right now, and how many (one broadcast)."""
        for attempt in range(2):
            try:
                replies = self.celery.control.inspect(timeout=timeout).active() or {}
                break
            except BROKER_ERRORS:
                if attempt:
                    raise
                self._client.close()
                self._client = None
        counts = [
            (len(replies.get(proc.nodename) or []), proc) for proc in self.workers if proc.alive
        ]
        running, proc = max(counts, key=lambda c: c[0], default=(0, None))
        return proc, running

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting in each of the orders' queues, as the broker counts them now (on
        Redis also those handed out and not yet acknowledged, under "unacked")."""
        depths = queue_depths(self.broker_url, ORDER_QUEUES)
        if len(depths) != len(ORDER_QUEUES):
            raise RuntimeError(f"the broker at {self.broker_url} did not answer")
        if not self.vhost:  # kombu's Redis transport keeps the unacknowledged apart
            depths["unacked"] = redis.Redis.from_url(self.redis.url).hlen("unacked")
        return depths

    def stop_broker(self) -> None:
        """Stop the broker: the private Redis loses everything in it; RabbitMQ closes every
        connection, refuses new ones and keeps its quorum queues."""
        if self.vhost:
            rabbitmq.stop_app()
        else:
            self.redis.stop()

    def start_broker(self) -> None:
        if self.vhost:
            rabbitmq.start_app()
        else:
            self.redis.start()
            self.redis.restarts += 1

    def restart_broker(self, *, down_for: float = 1.5) -> None:
        self.stop_broker()
        time.sleep(down_for)
        self.start_broker()

    def logs(self) -> str:
        procs = (
            [p for p in (self.redis.proc, self.web, self.beat) if p]
            + self.workers
            + self.killed_workers
            + self.crashed_workers
        )
        return "\n".join(f"===== {p.name} ({p.log_path})\n{p.tail(15)}" for p in procs)

    # --- teardown --------------------------------------------------------------------------
    def stop(self) -> None:
        """Kill every process group (workers first, Redis last), stop SMTP, and close the
        database connections the children left behind. Never raises before all is done."""
        errors = []
        for proc in [*self.flower, *self.workers, self.beat, self.web]:
            if proc is not None:
                try:
                    proc.kill()
                except Exception as exc:  # noqa: BLE001 - keep going: everything else must still stop
                    errors.append(exc)
        if self._client is not None:
            self._client.close()
        self.redis.stop()
        if self.vhost:
            try:
                if not rabbitmq.answers(rabbitmq.AMQP_PORT):  # a test stopped it and failed
                    rabbitmq.start_app()
                rabbitmq.vhost_delete(self.vhost)
            except Exception as exc:  # noqa: BLE001 - keep going, as above
                errors.append(exc)
        self.smtp.stop()
        _close_connections(self.app_name)
        if errors:
            raise errors[0]


def _close_connections(application_name: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for _ in range(50):
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                [application_name],
            )
            if not cursor.fetchall():
                return
            time.sleep(0.1)


def timing_errors_under(env: dict[str, str]) -> list[str]:
    """orders/checks.py's verdict on the timing the children get from `env`."""
    from django.conf import settings
    from django.test import override_settings

    from orders.checks import timing_errors

    names = {
        "PROVIDER_TIMEOUT_SECONDS": float,
        "CELERY_TASK_SOFT_TIME_LIMIT": int,
        "CELERY_TASK_TIME_LIMIT": int,
        "TASK_LOCK_TIMEOUT": int,
        "TASK_RETRY_BACKOFF_MAX": int,
        "ORDER_STALL_SECONDS": int,
        "ORDER_DEADLINE_SECONDS": int,
    }
    overrides = {name: cast(env[name]) for name, cast in names.items() if name in env}
    if "CELERY_VISIBILITY_TIMEOUT" in env:
        overrides["CELERY_BROKER_TRANSPORT_OPTIONS"] = {
            **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
            "visibility_timeout": int(env["CELERY_VISIBILITY_TIMEOUT"]),
        }
    with override_settings(**overrides):
        return timing_errors()


@pytest.fixture
def stack_factory(transactional_db, tmp_path):
    """Build and start a Stack; every stack it made is stopped at teardown, pass or fail.
    Depends on transactional_db, so the stack stops before the tables are flushed."""
    from django.conf import settings

    stacks: list[Stack] = []

    def make(*, env: dict | None = None, start: bool = True, broker: str = "", **options) -> Stack:
        """A stack, started with `options` unless `start=False` (the test starts it later,
        e.g. once it has prepared a database of its own). Its broker is the run's
        (BROKER_UNDER_TEST) unless `broker` names one ("redis" or "rabbitmq")."""
        log_dir = tmp_path / f"stack{len(stacks)}"
        log_dir.mkdir()
        stack = Stack(
            db_name=settings.DATABASES["default"]["NAME"],
            log_dir=log_dir,
            env=env,
            broker=broker or ("rabbitmq" if is_amqp(settings.CELERY_BROKER_URL) else "redis"),
            rabbitmq_url=settings.RABBITMQ_URL,
        )
        stacks.append(stack)
        if start:
            stack.start(**options)
        return stack

    yield make
    for stack in stacks:
        stack.stop()
