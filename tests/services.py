"""Make sure PostgreSQL, Redis and RabbitMQ answer before the suite starts, starting them if not
(the commands are the ones this project's CI machines use)."""

import glob
import os
import socket
import subprocess
import time

START_COMMANDS = {
    5432: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    6379: (
        'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
        "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
    ),
    # The port answers before the broker is ready to take connections; await_startup waits.
    5672: "rabbitmq-server -detached && rabbitmqctl await_startup --timeout 120",
}


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def ensure_services() -> None:
    if os.environ.get("SKIP_SERVICE_START"):
        return
    for port, command in START_COMMANDS.items():
        if answers(port):
            continue
        if port == 5432 and not glob.glob("/etc/postgresql/*"):
            continue  # no local cluster: DATABASE_URL points elsewhere
        subprocess.run(command, shell=True, check=False, capture_output=True)
        for _ in range(120):
            if answers(port):
                break
            time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
