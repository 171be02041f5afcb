"""The benchmark: `make bench` (BENCH_ARGS="--orders 500 --concurrency 1,2,4 --broker
redis,rabbitmq --what ceiling,pipeline,api").

For each broker and each number of worker processes, in one session, on PostgreSQL (database
`bench_orders`, kept between runs) and Redis (database 2; the broker too unless it is
RabbitMQ, in a virtual host `bench`), each run in a process of its own:
- `ceiling`: bare Celery running the order canvas's shape with no-op tasks on the pipeline's
  settings (tests/bench_ceiling.py); `ceiling-redis`, `ceiling-bare`, `ceiling-bare-redis`
  vary the result backend and the settings;
- `pipeline`: N two-line orders placed through `POST /api/orders/` by 16 clients, processed by
  one worker: orders/s end to end, the time from `201` to `completed`, and the cost of one
  order counted (SQL transactions and rows, Redis commands, provider calls, CPU ms of the
  web server and the worker);
  With `--webhook-endpoint`, each bench shop has one webhook endpoint subscribed to every
  event (`["*"]`), pointing at a receiver the bench runs on 127.0.0.1 (it verifies every
  signature and answers 204): the run is `pipeline+webhooks` (also a `--what` of its own,
  so that one session measures the pipeline with and without), and it reports the webhooks
  delivered per order and whether every order's events arrived;
- `api`, `api-busy`: `POST /api/orders/` latency and requests/s at 1, 16 and 64 clients, the
  workers stopped or running.
Prints every run and Markdown tables (the pipeline's share of its ceiling), and writes them
to bench/results/<time>.json and .md. Figures, not a test.
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import requests

BENCH_DB = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bench_orders")
BENCH_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
RESULTS_DIR = Path(__file__).resolve().parent.parent / "bench" / "results"
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
        help="what to run: pipeline, pipeline+webhooks (as --webhook-endpoint), ceiling (bare "
        "Celery, the canvas's shape, no-op tasks, the pipeline's settings), ceiling-redis "
        "(the same, results in Redis), ceiling-bare "
        "and ceiling-bare-redis (on Celery's defaults), api and api-busy (POST /api/orders/ "
        "latency at 1, 16 and 64 clients, workers stopped or running); a list",
    )
    parser.add_argument(
        "--sandbox",
        choices=["own", "app"],
        default="own",
        help="where the sandbox providers are served: on a server of their own, as Stripe's "
        "and EasyPost's are (own, the default: the app's server does the app's work alone), "
        "or by the app's server, as `make run` serves them (app)",
    )
    parser.add_argument(
        "--tracking-step",
        type=float,
        default=3600.0,
        help="EASYPOST_SANDBOX_TRACKING_STEP_SECONDS for the sandbox's trackers. By default "
        "an hour: parcels travel after the run, as they do for days in production, so the "
        "pipeline is measured from placed to completed against its ceiling; 5 (the "
        "sandbox's own default) moves them inside the run, and the figures then carry "
        "whatever share of the tracking events the run's length lets in",
    )
    parser.add_argument(
        "--webhook-endpoint",
        action="store_true",
        help="pipeline runs with one webhook endpoint per shop subscribed to every event, "
        "delivering to a receiver on 127.0.0.1",
    )
    parser.add_argument(
        "--webhook-worker",
        type=int,
        default=0,
        help="with webhooks: the processes of a worker of their own for the orders.webhooks "
        "queue, as docker-compose runs them (worker-webhooks), beside the pipeline's worker; "
        "0 (the default): the pipeline's worker takes that queue too (on two cores a second "
        "worker's own upkeep cost more than it gave: bench/README.md)",
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
                argv += ["--tracking-step", str(args.tracking_step), "--sandbox", args.sandbox]
                argv += ["--webhook-endpoint"] if args.webhook_endpoint else []
                argv += ["--webhook-worker", str(args.webhook_worker)]
                done = subprocess.run(argv, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{what} on {broker} failed:\n{done.stderr[-3000:]}")
                out = done.stdout
                result = json.loads(out.rsplit("RESULT ", 1)[1])
                print(out.split("RESULT ", 1)[0].strip(), flush=True)
                results.append(result)
    tables = _tables(results)
    print("\n" + tables, flush=True)
    # Kept beside the code: figures of one machine and one day, to compare inside a run.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS_DIR / f"{stamp}.md").write_text(f"# make bench, {stamp}\n\n{tables}\n")
    print(f"written to {RESULTS_DIR}/{stamp}.json and .md")
    if plotted := _plot_latency(results, RESULTS_DIR / f"{stamp}-api-latency.png"):
        print(f"plot of the API's latency against clients: {plotted}")


def _plot_latency(results: list[dict], path: Path) -> Path | None:
    """p50, p95 and p99 of `POST /api/orders/` against the number of clients, one line per
    run (workers stopped, workers running) and percentile; None if no API run happened."""
    runs = [r for r in results if r.get("api")]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no screen: render straight to the PNG
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in runs:
        label = "workers stopped" if r["what"] == "api" else "workers running"
        clients = [row["clients"] for row in r["api"]]
        for key, style in (("p50_ms", "-o"), ("p95_ms", "--s"), ("p99_ms", ":^")):
            ax.plot(clients, [row[key] for row in r["api"]], style, label=f"{label}, {key[:3]}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({row["clients"] for r in runs for row in r["api"]}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("latency of POST /api/orders/, ms")
    ax.set_title(f"POST /api/orders/ ({runs[0]['broker']}, gunicorn 2 x 8 threads)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _tables(results: list[dict]) -> str:
    """The runs as Markdown: the API's latency, the pipeline beside its ceiling, and the cost
    of one order."""
    lines = []
    for r in results:
        for row in r.get("api", []):
            if not lines:
                lines += [
                    "| run | clients | requests/s | p50 ms | p95 ms | p99 ms | errors |",
                    "|---|---|---|---|---|---|---|",
                ]
            lines.append(
                f"| {r['what']} | {row['clients']} | {row['per_second']} | {row['p50_ms']} "
                f"| {row['p95_ms']} | {row['p99_ms']} | {row['errors']} |"
            )
    runs = [r for r in results if "api" not in r]
    ceilings = {(r["broker"], r["concurrency"]): r for r in runs if r["what"] == "ceiling"}
    if runs:
        lines += [
            "",
            (
                "| broker | worker processes | run | orders | completed | orders/s "
                "| of the ceiling | created to completed, p50 / p99 s |"
            ),
            "|---|---|---|---|---|---|---|---|",
        ]
    for r in runs:
        ceiling = ceilings.get((r["broker"], r["concurrency"]))
        share = f"{r['orders_per_second'] / ceiling['orders_per_second']:.2f}" if ceiling else ""
        latency = (
            f"{r['created_to_completed_p50_s']} / {r['created_to_completed_p99_s']}"
            if "created_to_completed_p50_s" in r
            else ""
        )
        lines.append(
            f"| {r['broker']} | {r['concurrency']} | {r['what']} | {r['orders']} "
            f"| {r['completed']} | {r['orders_per_second']:.1f} | {share} | {latency} |"
        )
    costs = [r for r in runs if "per_order" in r]
    if costs:
        names = list(costs[0]["per_order"])
        lines += [
            "",
            "| broker | worker processes | orders in the database | " + " | ".join(names) + " |",
            "|---|---|---|" + "---|" * len(names),
        ]
        for r in costs:
            figures = " | ".join(str(r["per_order"][name]) for name in names)
            lines.append(
                f"| {r['broker']} | {r['concurrency']} | {r['orders_in_database']} | {figures} |"
            )
    hooked = [r for r in runs if "webhooks_per_order" in r]
    if hooked:
        lines += [
            "",
            (
                "| broker | worker processes | webhooks per order | every order's events arrived "
                "| unverified | drained after the last order, s |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for r in hooked:
            lines.append(
                f"| {r['broker']} | {r['concurrency']} | {r['webhooks_per_order']} "
                f"| {r['webhooks_every_order_complete']} | {r['webhooks_unverified']} "
                f"| {r['webhooks_drained_after_s']} |"
            )
    return "\n".join(lines)


def _one(args) -> None:
    from tests.services import ensure_services, free_port

    ensure_services()
    port = free_port()
    # The sandbox providers stand for Stripe's and EasyPost's servers: by default on a server
    # of their own, as those are (config/settings/sandbox.py), sending their events to the
    # app's endpoints; --sandbox app serves them from the app's server, as `make run` does.
    sandbox_port = free_port() if args.sandbox == "own" else port
    app = f"http://127.0.0.1:{port}"
    sandbox = f"http://127.0.0.1:{sandbox_port}/sandbox"
    # Production-like: persistent connections (CONN_MAX_AGE) and DEBUG off; the sandbox on.
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DJANGO_DEBUG": "false",
        "DATABASE_URL": BENCH_DB,
        "REDIS_URL": BENCH_REDIS,
        "CELERY_BROKER_URL": BENCH_RABBITMQ if args.broker == "rabbitmq" else BENCH_REDIS,
        "STRIPE_API_BASE": f"{sandbox}/stripe",
        "EASYPOST_API_BASE": f"{sandbox}/easypost/v2",
        "STRIPE_SANDBOX_WEBHOOK_URL": f"{app}/api/webhooks/stripe/",
        "EASYPOST_SANDBOX_WEBHOOK_URL": f"{app}/api/webhooks/easypost/",
        "CELERY_DB_REUSE_MAX": str(args.reuse_max),
        "EASYPOST_SANDBOX_TRACKING_STEP_SECONDS": str(args.tracking_step),
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
    _seed()
    args.sandbox_port = sandbox_port
    if args.what.startswith("api"):
        _api(args, env, port)
        return
    if args.what == "pipeline+webhooks":
        args.webhook_endpoint = True
    _pipeline(args, env, port)


PLACING_CLIENTS = 16


def _start_web(port: int, env: dict, *, access_log: str = "") -> subprocess.Popen:
    """gunicorn as production runs it (2 processes x 8 threads), with no throttle in the
    way: the benchmark's few users place thousands of orders."""
    bin_dir = os.path.dirname(sys.executable)
    argv = [f"{bin_dir}/gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "-k", "gthread"]
    argv += ["-w", "2", "--threads", "8", "--log-level", "warning"]
    if access_log:
        argv += ["--access-logfile", access_log]
    return subprocess.Popen(argv, env={**env, "THROTTLE_ORDER_CREATE_RATE": "1000000/min"})


def _start_sandbox(args, env: dict, *, access_log: str = "") -> subprocess.Popen | None:
    """The sandbox providers' own server (--sandbox own): one process of 8 threads, with only
    their routes and none of the app's middleware; None when the app's server serves them."""
    if args.sandbox != "own":
        return None
    bin_dir = os.path.dirname(sys.executable)
    argv = [f"{bin_dir}/gunicorn", "config.wsgi", "-b", f"127.0.0.1:{args.sandbox_port}"]
    argv += ["-k", "gthread", "-w", "1", "--threads", "8", "--log-level", "warning"]
    if access_log:
        argv += ["--access-logfile", access_log]
    proc = subprocess.Popen(argv, env={**env, "DJANGO_SETTINGS_MODULE": "config.settings.sandbox"})
    _wait_http(f"http://127.0.0.1:{args.sandbox_port}/sandbox/stripe/v1/events", any_answer=True)
    return proc


def _start_worker(
    concurrency: str, env: dict, *, app: str = "config", node: str = "bench", queues: str = ""
) -> subprocess.Popen:
    """A worker for every queue; `queues`: `-Q` or `-X` (every queue but) and a list."""
    bin_dir = os.path.dirname(sys.executable)
    argv = [f"{bin_dir}/celery", "-A", app, "worker", "-c", concurrency]
    argv += ["--loglevel", "WARNING", "-n", f"{node}@%h", *queues.split()]
    # The console email backend prints every email.
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)


def _each_client(tokens: list[str], work: Callable[[requests.Session], None]) -> None:
    """Run `work` in one thread per token, each with a session signed in with its token, and
    return when every thread is done."""

    def client(token: str) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        work(session)

    threads = [threading.Thread(target=client, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _pipeline(args, env: dict, port: int) -> None:
    """Orders placed through the API by PLACING_CLIENTS clients, processed by one worker with
    `--concurrency` processes; orders/s end to end, the time from `201` to `completed`, and
    the cost of one order, counted."""
    from tests.factories import order_payload

    access_log = f"/tmp/bench-access-{port}.log"
    # With webhooks and --webhook-worker N, their queue has a worker of its own, as
    # docker-compose runs it; by default the pipeline's worker takes it too.
    apart = args.webhook_endpoint and args.webhook_worker > 0
    sandbox_log = f"/tmp/bench-sandbox-access-{port}.log"
    sandbox = _start_sandbox(args, env, access_log=sandbox_log)
    procs = [
        _start_web(port, env, access_log=access_log),
        _start_worker(args.concurrency, env, queues="-X orders.webhooks" if apart else ""),
    ]
    if apart:
        procs.append(
            _start_worker(
                str(args.webhook_worker), env, node="bench-webhooks", queues="-Q orders.webhooks"
            )
        )
    payload = order_payload(("BENCH-A", 1), ("BENCH-B", 1))
    receiver = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        tokens = _tokens(PLACING_CLIENTS, f"http://127.0.0.1:{port}")
        receiver = _webhook_endpoints(enabled=args.webhook_endpoint)
        if receiver is not None:
            args.what = "pipeline+webhooks"
        time.sleep(3)  # the worker's pool
        before = _costs(procs, access_log, sandbox, sandbox_log)
        start = time.monotonic()
        ids = _place(f"http://127.0.0.1:{port}/api/orders/", payload, tokens, args.orders)
        created = time.monotonic()
        _wait_terminal(ids, start)
        done = time.monotonic()
        webhooks = _webhooks_arrived(receiver, ids, done) if receiver is not None else {}
        after = _costs(procs, access_log, sandbox, sandbox_log)
    finally:
        _stop([*procs, *([sandbox] if sandbox else [])])
        if receiver is not None:
            receiver.stop()
    from orders.models import Order

    orders = Order.objects.filter(pk__in=ids)
    completed = orders.filter(status="completed")
    latencies = sorted(
        (o.updated_at - o.created_at).total_seconds()
        for o in completed.only("created_at", "updated_at")
    )
    per_order = {k: round((after[k] - before[k]) / len(ids), 2) for k in after}
    extra = {
        "orders_in_database": Order.objects.count(),
        "created_to_completed_p50_s": round(latencies[len(latencies) // 2], 2),
        "created_to_completed_p99_s": round(latencies[int(len(latencies) * 0.99)], 2),
        "per_order": per_order,
        **webhooks,
        **({"webhook_worker_processes": args.webhook_worker} if apart else {}),
    }
    print(f"cost of one order: {per_order}")
    if webhooks:
        print(f"webhooks: {webhooks}")
    _report(args, completed=completed.count(), start=start, created=created, done=done, **extra)


def _webhook_endpoints(*, enabled: bool):
    """The bench shops' webhook endpoints: none (a run without them never inherits a previous
    run's, the database is kept), or one per shop subscribed to every event, all pointing at
    one receiver started here. Returns the receiver."""
    from orders import webhooks
    from orders.models import WebhookEndpoint
    from tests.webhook_receiver import Receiver

    WebhookEndpoint.objects.filter(user__username__startswith="bench-client-").delete()
    if not enabled:
        return None
    from django.contrib.auth import get_user_model

    receiver = Receiver().start()
    users = get_user_model().objects.filter(username__startswith="bench-client-")
    for index, user in enumerate(users):
        # A path per shop: the receiver checks each request against that shop's secret
        # alone, as the shop's own server would, not against all sixteen.
        path = f"/hooks/{index}"
        url = receiver.url.replace("/hooks", path)
        _, secret = webhooks.endpoint_create(user=user, url=url, events=["*"])
        receiver.paths[path] = len(receiver.secrets)
        receiver.secrets.append(secret)
    return receiver


def _webhooks_arrived(receiver, ids: list[str], done: float) -> dict[str, object]:
    """Wait until the receiver has every event the outbox holds for the orders (at most a
    minute), verified; what came per order, and how long after the last order ended. The
    outbox is read at each look: the sandbox's parcels go on moving (shipment.delivered)."""
    from orders.models import WebhookDelivery

    def outbox() -> dict[str, set[str]]:
        held: dict[str, set[str]] = {}
        for order_id, event_id in WebhookDelivery.objects.filter(order_id__in=ids).values_list(
            "order_id", "event_id"
        ):
            held.setdefault(str(order_id), set()).add(event_id)
        return held

    def arrived() -> dict[str, set[str]]:
        got: dict[str, set[str]] = {}
        for request in receiver.delivered():
            got.setdefault(request.order_id, set()).add(request.webhook_id)
        return got

    deadline = time.monotonic() + 60
    while arrived() != outbox() and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    got, expected = arrived(), outbox()
    return {
        "webhooks_per_order": round(sum(len(v) for v in got.values()) / len(ids), 2),
        "webhooks_every_order_complete": got == expected and len(expected) == len(ids),
        "webhooks_unverified": len(receiver.unverified()),
        "webhooks_drained_after_s": round(time.monotonic() - done, 2),
    }


def _place(url: str, payload: dict, tokens: list[str], count: int) -> list[str]:
    """POST `count` orders from one thread per token; returns their ids."""
    numbers = itertools.count()
    ids: list[str] = []

    def place(session: requests.Session) -> None:
        while next(numbers) < count:
            response = session.post(url, json=payload, timeout=60)
            response.raise_for_status()
            ids.append(response.json()["id"])

    _each_client(tokens, place)
    if len(ids) != count:
        raise SystemExit(f"placed {len(ids)} of {count} orders")
    return ids


def _wait_terminal(ids: list[str], start: float) -> None:
    from orders.models import Order

    terminal = ("completed", "failed", "cancelled")
    while Order.objects.filter(pk__in=ids).exclude(status__in=terminal).exists():
        if time.monotonic() - start > 900:
            raise SystemExit("gave up after 900 s")
        time.sleep(POLL_SECONDS)


def _costs(
    procs: list, access_log: str, sandbox: subprocess.Popen | None = None, sandbox_log: str = ""
) -> dict[str, float]:
    """Counters read now, whose growth over a run, divided by its orders, is the cost of one
    order: PostgreSQL transactions and rows (the bench database's statistics: the sandbox's
    included), Redis commands (broker, locks and cache: the whole server), HTTP calls to the
    sandbox providers (the access logs), and CPU milliseconds of the web server's, the
    worker's and the sandbox's own server's process trees."""
    import psycopg
    import redis

    from tests.procs import children_of

    name = BENCH_DB.rsplit("/", 1)[1]
    with psycopg.connect(BENCH_DB, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback, tup_inserted, tup_updated, tup_fetched "
            "FROM pg_stat_database WHERE datname = %s",
            [name],
        ).fetchone()
    stats = redis.Redis.from_url(BENCH_REDIS).info("commandstats")
    lines = []
    for path in {access_log, sandbox_log} - {""}:
        try:
            with open(path) as log:
                lines += log.readlines()
        except FileNotFoundError:
            pass
    provider_calls = sum("/sandbox/" in line for line in lines)
    # Stripe's events, sent back by the sandbox to the webhook endpoint.
    webhook_calls = sum("/api/webhooks/" in line for line in lines)
    ticks = os.sysconf("SC_CLK_TCK")

    def stat_ms(stat: str, *, reaped: bool = False) -> float:
        """A /proc/<pid>/stat line's user and system CPU, in ms; `reaped`: with the ended
        children the process has waited for."""
        fields = stat.rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11 : 15 if reaped else 13]) * 1000 / ticks

    def cpu_ms(pid: int) -> float:
        total = 0.0
        for p in [pid, *children_of(pid)]:
            try:
                total += stat_ms(Path(f"/proc/{p}/stat").read_text())
            except OSError:
                continue
        return total

    def server_cpu_ms(name: str) -> float:
        """A server's CPU on this machine (every process of that name; PostgreSQL's postmaster
        counts its ended backends too, having reaped them)."""
        total = 0.0
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if stat[stat.find("(") + 1 : stat.rfind(")")] == name:
                total += stat_ms(stat, reaped=True)
        return total

    return {
        "sql_transactions": row[0],
        "rows_inserted": row[1],
        "rows_updated": row[2],
        "rows_fetched": row[3],
        "redis_commands": sum(v["calls"] for v in stats.values()),
        "provider_http_calls": provider_calls,
        "webhook_calls": webhook_calls,
        "web_cpu_ms": cpu_ms(procs[0].pid),
        "worker_cpu_ms": sum(cpu_ms(proc.pid) for proc in procs[1:]),  # webhooks' too
        **({"sandbox_cpu_ms": cpu_ms(sandbox.pid)} if sandbox else {}),
        # The servers' whole CPU: anything else they serve meanwhile counts too.
        "postgres_cpu_ms": server_cpu_ms("postgres"),
        "redis_cpu_ms": server_cpu_ms("redis-server"),
    }


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

    worker = _start_worker(args.concurrency, env, app="tests.bench_ceiling", node="ceiling")
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
        _stop([worker])
    _report(args, completed=args.orders, start=start, created=created, done=done)


API_CLIENTS = (1, 16, 64)
API_SECONDS = 10.0


def _api(args, env: dict, port: int) -> None:
    """`POST /api/orders/` as the shop's clients send it: gunicorn (2 processes x 8 threads),
    each client a thread with its own token, for API_SECONDS at each of API_CLIENTS; with the
    workers stopped (`api`) or running (`api-busy`)."""
    from tests.factories import order_payload

    procs = [_start_web(port, env)]
    if args.what == "api-busy":
        procs.append(_start_worker(args.concurrency, env))
        if sandbox := _start_sandbox(args, env):
            procs.append(sandbox)
    url = f"http://127.0.0.1:{port}/api/orders/"
    payload = order_payload(("BENCH-A", 1), ("BENCH-B", 1))
    rows = []
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        tokens = _tokens(max(API_CLIENTS), f"http://127.0.0.1:{port}")
        time.sleep(3)
        for clients in API_CLIENTS:
            row = _api_round(url, payload, tokens[:clients])
            print(f"{args.what}: {row}", flush=True)
            rows.append(row)
    finally:
        _stop(procs)
    result = {"what": args.what, "broker": args.broker, "concurrency": int(args.concurrency)}
    print("RESULT " + json.dumps({**result, "api": rows}), flush=True)


def _api_round(url: str, payload: dict, tokens: list[str]) -> dict:
    """One client thread per token, posting orders back to back for API_SECONDS."""
    latencies: list[float] = []
    errors: list[int] = []
    stop_at = time.monotonic() + API_SECONDS

    def post(session: requests.Session) -> None:
        mine, failed = [], 0
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            try:
                ok = session.post(url, json=payload, timeout=30).status_code == 201
            except requests.RequestException:
                ok = False
            mine.append(time.perf_counter() - began)
            failed += not ok
        latencies.extend(mine)
        errors.append(failed)

    began = time.monotonic()
    _each_client(tokens, post)
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


def _tokens(count: int, base_url: str) -> list[str]:
    """One OAuth client per bench shop, each with a token from the token endpoint (client
    credentials), as a shop's server gets it: every request then pays the token lookup."""
    from django.contrib.auth import get_user_model

    from orders.models import API_SCOPES, ApiClient
    from orders.oauth import api_client_create, api_client_secret_reset
    from tests.helpers import client_credentials_token

    tokens = []
    for i in range(count):
        user, _ = get_user_model().objects.get_or_create(
            username=f"bench-client-{i}", defaults={"email": f"client{i}@example.com"}
        )
        client = ApiClient.objects.filter(user=user).first()
        issued = (
            api_client_secret_reset(client=client)
            if client
            else api_client_create(user=user, scopes=list(API_SCOPES))
        )
        tokens.append(
            client_credentials_token(base_url, issued.client.client_id, issued.client_secret)
        )
    return tokens


def _report(
    args, *, completed: int, start: float, created: float, done: float, **extra: object
) -> None:
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
        "tracking_step_seconds": args.tracking_step,
        **extra,
    }
    print("RESULT " + json.dumps(result), flush=True)


def _create_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _seed() -> None:
    """The two products every benchmark order buys, with stock that never runs out."""
    from orders.models import Product

    for sku in ("BENCH-A", "BENCH-B"):
        Product.objects.update_or_create(
            sku=sku,
            defaults={
                "name": sku,
                "price": "5.00",
                "stock": 10**9,
                "weight_grams": 300,
                "is_active": True,
            },
        )


def _wait_http(url: str, *, any_answer: bool = False) -> None:
    """Until `url` answers 2xx (or, with any_answer, anything at all: an API without a key)."""
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            if any_answer:
                return
            time.sleep(0.2)
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} never answered")


if __name__ == "__main__":
    main()
