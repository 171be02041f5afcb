#!/bin/sh
# The postgres image runs this once, on an empty data directory (docker-entrypoint-initdb.d),
# as its superuser POSTGRES_USER, after creating POSTGRES_DB: it creates the owner (for
# `manage.py migrate`) and the runtime role (web, workers, beat) of that database.
set -eu
sql_dir=${ORDERS_DB_SQL_DIR:-/orders-db}
psql --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v owner="$ORDERS_DB_OWNER" -v owner_password="$ORDERS_DB_OWNER_PASSWORD" \
  -f "$sql_dir/owner-role.sql"
psql --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v owner="$ORDERS_DB_OWNER" -v app="$ORDERS_DB_APP" -v app_password="$ORDERS_DB_APP_PASSWORD" \
  -f "$sql_dir/app-role.sql"
