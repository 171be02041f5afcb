"""Least privilege in PostgreSQL: web, workers and beat connect as a role that may read and
write rows and can create, alter, drop or truncate no table; `manage.py migrate` connects as
the tables' owner (MIGRATION_DATABASE_URL). The roles are made by the scripts docker-compose
runs and the README gives (deploy/postgres/), so these tests check what is deployed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from tests.factories import ProductFactory, order_payload
from tests.helpers import carrier_ledger, gateway_ledger, place_as_new_customer, wait_for_orders

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = ROOT / "deploy" / "postgres"


@dataclass
class Role:
    name: str
    password: str

    def url(self, server: dict, dbname: str, *, application_name: str = "") -> str:
        url = (
            f"postgres://{self.name}:{quote(self.password, safe='')}"
            f"@{server['HOST']}:{server['PORT']}/{dbname}"
        )
        return f"{url}?application_name={application_name}" if application_name else url

    def connect(self, server: dict, dbname: str) -> psycopg.Connection:
        return psycopg.connect(
            host=server["HOST"],
            port=server["PORT"],
            dbname=dbname,
            user=self.name,
            password=self.password,
        )


def unique_role(kind: str) -> Role:
    """Roles belong to the whole cluster, not to the test database: a name of this run's own,
    so that concurrent runs never meet."""
    return Role(f"test_{kind}_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex)


def server_settings() -> dict:
    """Host, port, superuser and database of the suite's own connection."""
    from django.db import connection

    db = connection.settings_dict
    return {
        "HOST": db["HOST"] or "127.0.0.1",
        "PORT": str(db["PORT"] or 5432),
        "USER": db["USER"],
        "PASSWORD": db["PASSWORD"] or "",
        "NAME": db["NAME"],
    }


def psql_env(server: dict) -> dict[str, str]:
    return {
        **os.environ,
        "PGHOST": server["HOST"],
        "PGPORT": server["PORT"],
        "PGUSER": server["USER"],
        "PGPASSWORD": server["PASSWORD"],
    }


def run_as_superuser(server: dict, *statements: str, dbname: str = "postgres") -> None:
    with psycopg.connect(
        host=server["HOST"],
        port=server["PORT"],
        dbname=dbname,
        user=server["USER"],
        password=server["PASSWORD"] or None,
        autocommit=True,
    ) as conn:
        for statement in statements:
            conn.execute(statement)


def drop_roles(server: dict, *roles: Role, dbname: str) -> None:
    """Their sessions ended, what they were granted in `dbname` revoked, the roles dropped."""
    names = ", ".join(f'"{role.name}"' for role in roles)
    run_as_superuser(
        server,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ("
        + ", ".join(f"'{role.name}'" for role in roles)
        + ")",
        f"DROP OWNED BY {names}",
        dbname=dbname,
    )
    run_as_superuser(server, f"DROP ROLE {names}")


@pytest.fixture(scope="module")
def app_role(django_db_setup) -> Iterator[Role]:
    """A runtime role on the test database, made with deploy/postgres/app-role.sql as the
    README says for a database that exists already. The suite migrated the test database as
    its superuser, so that is the owner here."""
    from django.conf import settings

    server = server_settings()
    # Only ever the test database: the grants below take CONNECT away from PUBLIC.
    assert server["NAME"] == settings.DATABASES["default"]["TEST"]["NAME"], server["NAME"]
    role = unique_role("app")
    subprocess.run(
        [
            "psql",
            "--no-psqlrc",
            "--dbname",
            server["NAME"],
            "-v",
            f"owner={server['USER']}",
            "-v",
            f"app={role.name}",
            "-v",
            f"app_password={role.password}",
            "-f",
            str(SQL_DIR / "app-role.sql"),
        ],
        env=psql_env(server),
        check=True,
        capture_output=True,
    )
    try:
        yield role
    finally:
        drop_roles(server, role, dbname=server["NAME"])


# Each would change the schema; each must be refused with "permission denied" (or "must be
# owner"), SQLSTATE 42501. A statement that went through anyway is rolled back.
FORBIDDEN = {
    "drop": "DROP TABLE orders_order CASCADE",
    "alter": "ALTER TABLE orders_product ADD COLUMN intruder integer",
    "alter constraint": "ALTER TABLE orders_product DROP CONSTRAINT product_stock_gte_0",
    "truncate": "TRUNCATE orders_product CASCADE",
    "create": "CREATE TABLE orders_intruder (id integer)",
    "create temporary": "CREATE TEMPORARY TABLE intruder (id integer)",
    "create schema": "CREATE SCHEMA intruder",
    "create index": "CREATE INDEX intruder ON orders_product (name)",
}


@pytest.mark.django_db  # the test database set up; the role's own connection does the rest
@pytest.mark.parametrize("statement", FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_the_runtime_role_cannot_change_the_schema(app_role, statement):
    server = server_settings()
    with app_role.connect(server, server["NAME"]) as conn:
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        finally:
            conn.rollback()
        # The tables are all there, as they were.
        assert conn.execute("SELECT count(*) FROM orders_product").fetchone() is not None


@pytest.mark.django_db
def test_the_runtime_role_reads_and_writes_rows(app_role):
    """What the steps do: insert (the identity column's sequence included), lock a row and
    update it, read it, delete it. In a transaction rolled back: the test database stays as
    it was."""
    server = server_settings()
    with app_role.connect(server, server["NAME"]) as conn:
        try:
            (product_id,) = conn.execute(
                "INSERT INTO orders_product (sku, name, price, currency, stock, weight_grams,"
                " is_active, created_at, updated_at) VALUES ('ROLE-001', 'Role mug', 12.50,"
                " 'EUR', 5, 350, true, now(), now()) RETURNING id"
            ).fetchone()
            conn.execute("SELECT id FROM orders_product WHERE id = %s FOR UPDATE", [product_id])
            conn.execute("UPDATE orders_product SET stock = stock - 2 WHERE id = %s", [product_id])
            stock = conn.execute(
                "SELECT stock FROM orders_product WHERE id = %s", [product_id]
            ).fetchone()
            assert stock == (3,)
            deleted = conn.execute("DELETE FROM orders_product WHERE id = %s", [product_id])
            assert deleted.rowcount == 1
        finally:
            conn.rollback()


@pytest.mark.slow
def test_the_whole_pipeline_runs_on_the_runtime_role(stack_factory, app_role):
    """Web server, worker and beat all connect as the runtime role: orders placed over HTTP
    complete, charged once and shipped once each, the sandbox providers' own tables written
    through the same role."""
    ProductFactory(sku="MUG-001", price="12.50", stock=10)
    stack = stack_factory(start=False)
    stack.overrides["DATABASE_URL"] = app_role.url(
        server_settings(), stack.db_name, application_name=stack.app_name
    )
    stack.start(workers=1, beat=True)

    ids = [place_as_new_customer(stack.web_url, order_payload(("MUG-001", 1))) for _ in range(3)]
    orders = wait_for_orders(ids, timeout=90)

    assert [o.status for o in orders] == ["completed"] * 3, stack.logs()
    for order in orders:
        charges = gateway_ledger(stack.web_url, order.id)
        assert [(c["status"], c["refunded"]) for c in charges] == [("succeeded", False)]
        assert len(carrier_ledger(stack.web_url, order.id)) == 1
    assert sorted(stack.smtp.subjects()) == sorted(f"Your order {i} is confirmed" for i in ids)
    # And it was the runtime role that did it: every connection of the stack's processes.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name = %s",
            [stack.app_name],
        )
        assert [row[0] for row in cursor.fetchall()] == [app_role.name]


@pytest.fixture
def fresh_database() -> Iterator[tuple[str, Role, Role]]:
    """An empty database set up as docker-compose's postgres does it: its init script
    (deploy/postgres/init-roles.sh) run by the superuser, with roles of this run's own.
    Dropped afterwards, with its roles."""
    from django.conf import settings

    server = server_settings()
    owner, app = unique_role("owner"), unique_role("app")
    dbname = f"{settings.DATABASES['default']['TEST']['NAME']}_fresh_{uuid.uuid4().hex[:6]}"
    run_as_superuser(server, f'CREATE DATABASE "{dbname}"')
    try:
        subprocess.run(
            ["sh", str(SQL_DIR / "init-roles.sh")],
            env={
                **psql_env(server),
                "POSTGRES_USER": server["USER"],
                "POSTGRES_DB": dbname,
                "ORDERS_DB_SQL_DIR": str(SQL_DIR),
                "ORDERS_DB_OWNER": owner.name,
                "ORDERS_DB_OWNER_PASSWORD": owner.password,
                "ORDERS_DB_APP": app.name,
                "ORDERS_DB_APP_PASSWORD": app.password,
            },
            check=True,
            capture_output=True,
        )
        yield dbname, owner, app
    finally:
        run_as_superuser(server, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        run_as_superuser(server, f'DROP ROLE IF EXISTS "{app.name}", "{owner.name}"')


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # Only what the command needs: the runner's own DATABASE_URL or TEST_DATABASE_NAME must
    # not decide where it connects.
    own = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MIGRATION_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**own, "DJANGO_SETTINGS_MODULE": "config.settings.test", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_migrate_runs_as_the_owner_and_the_runtime_role_gets_the_new_tables(fresh_database):
    """docker-compose's order: the init script makes both roles, then `manage.py migrate`
    (MIGRATION_DATABASE_URL: the owner) creates the tables, which the runtime role (its
    DATABASE_URL) may then use through the default privileges, and not change."""
    dbname, owner, app = fresh_database
    server = server_settings()
    runtime_url = app.url(server, dbname)

    refused = manage("migrate", "--noinput", env={"DATABASE_URL": runtime_url})
    assert refused.returncode != 0
    assert "permission denied for schema public" in refused.stderr

    migrated = manage(
        "migrate",
        "--noinput",
        env={"DATABASE_URL": runtime_url, "MIGRATION_DATABASE_URL": owner.url(server, dbname)},
    )
    assert migrated.returncode == 0, migrated.stderr

    with app.connect(server, dbname) as conn:
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        assert owners == [(owner.name,)]
        conn.execute(
            "INSERT INTO orders_product (sku, name, price, currency, stock, weight_grams,"
            " is_active, created_at, updated_at) VALUES ('ROLE-001', 'Role mug', 12.50,"
            " 'EUR', 5, 350, true, now(), now())"
        )
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE orders_product CASCADE")
        conn.rollback()
        assert conn.execute("SELECT sku FROM orders_product").fetchall() == [("ROLE-001",)]
    # Every other command connects with DATABASE_URL (here the demo data, as the runtime
    # role): a MIGRATION_DATABASE_URL that leads nowhere does not stop it.
    seeded = manage(
        "seed_demo",
        env={
            "DATABASE_URL": runtime_url,
            "MIGRATION_DATABASE_URL": "postgres://nobody@127.0.0.1:1/x",
        },
    )
    assert seeded.returncode == 0, seeded.stderr
