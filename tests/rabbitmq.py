"""The local RabbitMQ, driven with rabbitmqctl: a virtual host per test run or per stack (so
concurrent runs never share a queue), and a restart of the broker for the tests that need one."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from urllib.parse import unquote, urlsplit

from tests.services import answers

AMQP_PORT = 5672


def _ctl(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def vhost_of(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/")) or "/"


def vhost_create(name: str) -> None:
    """A fresh, empty virtual host that guest may use (an old one of the same name is
    dropped first: a run that was killed leaves its queues behind)."""
    vhost_delete(name)
    _ctl("add_vhost", name)
    _ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")


def vhost_delete(name: str) -> None:
    if name in _ctl("list_vhosts", "--quiet", "--no-table-headers").split():
        _ctl("delete_vhost", name)


def stop_app() -> None:
    """Stop the broker's application (the node stays up): every connection is closed and new
    ones are refused, as when the broker restarts."""
    _ctl("stop_app")


def start_app(*, timeout: float = 120) -> None:
    _ctl("start_app")
    _ctl("await_startup", "--timeout", str(int(timeout)))
    deadline = time.monotonic() + timeout
    while not answers(AMQP_PORT):
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ's port did not answer after start_app")
        time.sleep(0.2)


def import_definitions(definitions: str) -> None:
    """Load definitions (JSON: virtual hosts, users, permissions) as the broker does at boot
    with `load_definitions`. From a file anyone may read: rabbitmqctl may run as the broker's
    own user. The import goes on after this returns."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        file.write(definitions)
        file.flush()
        os.chmod(file.name, 0o644)
        _ctl("import_definitions", file.name)


def user_names() -> list[str]:
    lines = _ctl("list_users", "--quiet", "--no-table-headers").splitlines()
    return [line.split("\t")[0] for line in lines if line.strip()]


def user_delete(name: str) -> None:
    if name in user_names():
        _ctl("delete_user", name)
