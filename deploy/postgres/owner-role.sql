-- The owner: `manage.py migrate` connects as this role (MIGRATION_DATABASE_URL), creates the
-- tables and owns them. Nothing else connects as it.
--
--   psql -v owner=orders -v owner_password=... -d orders -f owner-role.sql   (as a superuser)
--
-- Not a superuser: the owner can change its own tables, not the cluster or other databases.
\set ON_ERROR_STOP on
CREATE ROLE :"owner" LOGIN PASSWORD :'owner_password';
ALTER DATABASE :"DBNAME" OWNER TO :"owner";
-- PostgreSQL 15 gives schema public to the database's owner already; before 15 it belonged to
-- the superuser that created the cluster.
ALTER SCHEMA public OWNER TO :"owner";
