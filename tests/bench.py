"""Throughput of the order pipeline: `make bench` (BENCH_ARGS="--orders 300 --concurrency 1,2,4
--broker redis,rabbitmq").

For each broker and each number of worker processes, starts a web server (the sandbox
providers) and one Celery worker as processes against PostgreSQL (and Redis database 2 for
the locks, and the broker unless it is RabbitMQ, in a virtual host `bench`), creates N
two-line orders (each dispatches its canvas on commit) and prints how many orders per second
reach `completed`, then a Markdown table of all runs. Not a test: figures only.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

BENCH_DB = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_orders")
BENCH_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
BENCH_RABBITMQ = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/bench")
# How often the bench polls for terminal orders; its own queries are part of what it measures.
POLL_SECONDS = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument(
        "--concurrency", default="4", help="worker processes, or a list of them: 1,2,4"
    )
    parser.add_argument(
        "--broker", default="redis", help="redis, rabbitmq, or both: redis,rabbitmq"
    )
    parser.add_argument(
        "--reuse-max", type=int, default=200, help="CELERY_DB_REUSE_MAX (0: reconnect per task)"
    )
    parser.add_argument(
        "--what",
        default="ceiling,pipeline",
        help="what to run: pipeline, ceiling (bare Celery, the canvas's shape, no-op tasks, "
        "the pipeline's settings), ceiling-redis (the same, results in Redis), ceiling-bare "
        "and ceiling-bare-redis (on Celery's defaults), api and api-busy (POST /api/orders/ "
        "latency at 1, 16 and 64 clients, workers stopped or running); a list",
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # one run, in a child
    args = parser.parse_args()
    if args.one:
        _one(args)
        return
    results = []
    for broker in args.broker.split(","):
        for concurrency in args.concurrency.split(","):
            for what in args.what.split(","):
                # Each run in a process of its own: the Celery app's broker is fixed at start.
                argv = [sys.executable, "-m", "tests.bench", "--one", "--orders", str(args.orders)]
                argv += ["--broker", broker, "--concurrency", concurrency, "--what", what]
                argv += ["--reuse-max", str(args.reuse_max)]
                out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
                result = json.loads(out.rsplit("RESULT ", 1)[1])
                print(out.split("RESULT ", 1)[0].strip(), flush=True)
                results.append(result)
    api = [r for r in results if "api" in r]
    results = [r for r in results if "api" not in r]
    if api:
        print(
            "\n| run | clients | requests/s | p50 ms | p95 ms | p99 ms | errors |"
            "\n|---|---|---|---|---|---|---|"
        )
        for r in api:
            for row in r["api"]:
                print(
                    f"| {r['what']} | {row['clients']} | {row['per_second']} | {row['p50_ms']} "
                    f"| {row['p95_ms']} | {row['p99_ms']} | {row['errors']} |"
                )
    if not results:
        return
    ceilings = {(r["broker"], r["concurrency"]): r for r in results if r["what"] == "ceiling"}
    print(
        "\n| broker | worker processes | run | orders | completed | orders/s | of the ceiling |"
        "\n|---|---|---|---|---|---|---|"
    )
    for r in results:
        ceiling = ceilings.get((r["broker"], r["concurrency"]))
        share = f"{r['orders_per_second'] / ceiling['orders_per_second']:.2f}" if ceiling else ""
        print(
            f"| {r['broker']} | {r['concurrency']} | {r['what']} | {r['orders']} "
            f"| {r['completed']} | {r['orders_per_second']:.1f} | {share} |"
        )


def _one(args) -> None:
    from tests.services import ensure_services, free_port

    ensure_services()
    port = free_port()
    # Production-like: persistent connections (CONN_MAX_AGE) and DEBUG off; the sandbox on.
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DJANGO_DEBUG": "false",
        "DATABASE_URL": BENCH_DB,
        "REDIS_URL": BENCH_REDIS,
        "CELERY_BROKER_URL": BENCH_RABBITMQ if args.broker == "rabbitmq" else BENCH_REDIS,
        "SANDBOX_URL": f"http://127.0.0.1:{port}/sandbox/",
        "CELERY_DB_REUSE_MAX": str(args.reuse_max),
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    _create_database(BENCH_DB)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, check=True)

    import django

    django.setup()
    import redis

    redis.Redis.from_url(BENCH_REDIS).flushdb()
    if args.broker == "rabbitmq":
        from tests import rabbitmq

        rabbitmq.vhost_create(rabbitmq.vhost_of(BENCH_RABBITMQ))  # empty queues for each run
    if args.what.startswith("ceiling"):
        _ceiling(args, env)
        return
    if args.what.startswith("api"):
        _api(args, env, port)
        return
    user, products = _seed()

    bin_dir = os.path.dirname(sys.executable)
    procs = [
        subprocess.Popen(
            [
                f"{bin_dir}/gunicorn",
                "config.wsgi",
                "-b",
                f"127.0.0.1:{port}",
                "-k",
                "gthread",
                "--threads",
                "8",
                "--log-level",
                "warning",
            ],
            env=env,
        ),
        subprocess.Popen(
            [
                f"{bin_dir}/celery",
                "-A",
                "config",
                "worker",
                "-c",
                args.concurrency,
                "--loglevel",
                "WARNING",
                "-n",
                "bench@%h",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        ),  # the console email backend prints every email
    ]
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        time.sleep(3)  # the worker's pool
        _run(user, products, args)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def _ceiling(args, env: dict) -> None:
    """Bare Celery: the canvas's shape with no-op tasks, on the same broker, result backend
    and worker processes as the pipeline (tests/bench_ceiling.py)."""
    # ceiling[-bare][-redis]: Celery's defaults instead of the pipeline's settings; results in
    # Redis instead of PostgreSQL.
    if "-bare" in args.what:
        env["CEILING_SETTINGS"] = os.environ["CEILING_SETTINGS"] = "bare"
    if args.what.endswith("-redis"):
        env["CEILING_RESULT_BACKEND"] = os.environ["CEILING_RESULT_BACKEND"] = "redis"
    import redis

    from tests import bench_ceiling

    bin_dir = os.path.dirname(sys.executable)
    argv = [f"{bin_dir}/celery", "-A", "tests.bench_ceiling", "worker", "-c", args.concurrency]
    worker = subprocess.Popen(
        [*argv, "--loglevel", "WARNING", "-n", "ceiling@%h"], env=env, stdout=subprocess.DEVNULL
    )
    counter = redis.Redis.from_url(BENCH_REDIS)
    try:
        time.sleep(5)  # the worker's pool
        start = time.monotonic()
        for _ in range(args.orders):
            bench_ceiling.canvas().apply_async()
        created = time.monotonic()
        while int(counter.get(bench_ceiling.DONE_KEY) or 0) < args.orders:
            if time.monotonic() - start > 600:
                raise SystemExit("gave up after 600 s")
            time.sleep(0.05)
        done = time.monotonic()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    _report(args, completed=args.orders, start=start, created=created, done=done)


API_CLIENTS = (1, 16, 64)
API_SECONDS = 10.0


def _api(args, env: dict, port: int) -> None:
    """`POST /api/orders/` as the shop's clients send it: gunicorn (2 processes x 8 threads),
    each client a thread with its own token, for API_SECONDS at each of API_CLIENTS; with the
    workers stopped (`api`) or running (`api-busy`)."""
    from tests.factories import order_payload

    env = {**env, "THROTTLE_ORDER_CREATE_RATE": "1000000/min"}
    bin_dir = os.path.dirname(sys.executable)
    web = [f"{bin_dir}/gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "-k", "gthread"]
    procs = [
        subprocess.Popen([*web, "-w", "2", "--threads", "8", "--log-level", "warning"], env=env)
    ]
    if args.what == "api-busy":
        worker = [f"{bin_dir}/celery", "-A", "config", "worker", "-c", args.concurrency]
        procs.append(
            subprocess.Popen(
                [*worker, "--loglevel", "WARNING", "-n", "bench@%h"],
                env=env,
                stdout=subprocess.DEVNULL,
            )
        )
    tokens = _tokens(max(API_CLIENTS))
    url = f"http://127.0.0.1:{port}/api/orders/"
    payload = order_payload(("BENCH-A", 1), ("BENCH-B", 1))
    rows = []
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        time.sleep(3)
        for clients in API_CLIENTS:
            row = _api_round(url, payload, tokens[:clients])
            print(f"{args.what}: {row}", flush=True)
            rows.append(row)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    result = {"what": args.what, "broker": args.broker, "concurrency": int(args.concurrency)}
    print("RESULT " + json.dumps({**result, "api": rows}), flush=True)


def _api_round(url: str, payload: dict, tokens: list[str]) -> dict:
    """One client thread per token, posting orders back to back for API_SECONDS."""
    import threading

    import requests

    latencies: list[float] = []
    errors: list[int] = []
    stop_at = time.monotonic() + API_SECONDS

    def client(token: str) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        mine, failed = [], 0
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            response = session.post(url, json=payload, timeout=30)
            mine.append(time.perf_counter() - began)
            failed += response.status_code != 201
        latencies.extend(mine)
        errors.append(failed)

    threads = [threading.Thread(target=client, args=(token,)) for token in tokens]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - began
    latencies.sort()

    def pct(p: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1)

    return {
        "clients": len(tokens),
        "requests": len(latencies),
        "errors": sum(errors),
        "per_second": round(len(latencies) / took, 1),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
    }


def _tokens(count: int) -> list[str]:
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    tokens = []
    for i in range(count):
        user, _ = get_user_model().objects.get_or_create(
            username=f"bench-client-{i}", defaults={"email": f"client{i}@example.com"}
        )
        tokens.append(Token.objects.get_or_create(user=user)[0].key)
    return tokens


def _report(args, *, completed: int, start: float, created: float, done: float) -> None:
    rate = args.orders / (done - start)
    print(
        f"{args.what} on {args.broker}, {args.concurrency} worker processes, "
        f"CELERY_DB_REUSE_MAX {args.reuse_max}: {args.orders} orders ({completed} completed) "
        f"sent in {created - start:.1f}s, all done after {done - start:.1f}s: "
        f"{rate:.1f} orders/s"
    )
    result = {
        "what": args.what,
        "broker": args.broker,
        "concurrency": int(args.concurrency),
        "orders": args.orders,
        "completed": completed,
        "orders_per_second": round(rate, 2),
    }
    print("RESULT " + json.dumps(result), flush=True)


def _create_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _seed():
    from django.contrib.auth import get_user_model

    from orders.models import Product

    user, _ = get_user_model().objects.get_or_create(
        username="bench", defaults={"email": "bench@example.com"}
    )
    products = []
    for sku in ("BENCH-A", "BENCH-B"):
        product, _ = Product.objects.update_or_create(
            sku=sku, defaults={"name": sku, "price": "5.00", "stock": 10**9, "is_active": True}
        )
        product.refresh_from_db()  # price back as a Decimal
        products.append(product)
    return user, products


def _wait_http(url: str) -> None:
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} never answered")


def _run(user, products, args) -> None:
    from orders.models import Order
    from orders.services import order_create

    address = {
        "name": "Bench",
        "line1": "1 St",
        "city": "X",
        "postal_code": "10115",
        "country": "DE",
    }
    start = time.monotonic()
    ids = [
        order_create(
            user=user,
            lines=[{"product": p, "quantity": 1} for p in products],
            shipping_address=address,
            payment_token="tok_ok",
        ).id
        for _ in range(args.orders)
    ]
    created = time.monotonic()
    terminal = ("completed", "failed", "cancelled")
    while Order.objects.filter(pk__in=ids).exclude(status__in=terminal).exists():
        if time.monotonic() - start > 600:
            raise SystemExit("gave up after 600 s")
        time.sleep(POLL_SECONDS)
    done = time.monotonic()
    completed = Order.objects.filter(pk__in=ids, status="completed").count()
    _report(args, completed=completed, start=start, created=created, done=done)


if __name__ == "__main__":
    main()
