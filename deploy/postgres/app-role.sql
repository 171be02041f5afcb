-- The runtime role: web, workers and beat connect as this role (DATABASE_URL). It may read
-- and write rows of the owner's tables, and cannot create, alter, drop or truncate any table.
--
--   psql -v owner=orders -v app=orders_app -v app_password=... -d orders -f app-role.sql
--
-- Run it as a superuser (or a role with CREATEROLE that is a member of the owner), once the
-- owner exists; on a database already migrated too: the GRANTs below cover the tables there
-- now, the default privileges those that later migrations create.
\set ON_ERROR_STOP on
CREATE ROLE :"app" LOGIN PASSWORD :'app_password';

-- Connect, nothing more: not even temporary tables. PUBLIC (every role of the cluster) gets
-- CONNECT and TEMPORARY on every new database; here only the roles named may connect.
REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"DBNAME" TO :"app";

-- Reach the tables, create none: PostgreSQL 15 no longer lets PUBLIC create in schema public;
-- older versions did, so take it away explicitly.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";

-- Rows only. DROP and ALTER belong to a table's owner, TRUNCATE is its own privilege, and
-- none of them is granted. SELECT ... FOR UPDATE (the steps' row locks) needs UPDATE;
-- sequences need USAGE for nextval.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"app";
-- The tables and sequences the owner creates later (every `manage.py migrate` to come).
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO :"app";
