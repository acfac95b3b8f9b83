#!/bin/bash
# Run once by the PostgreSQL container on its first start (/docker-entrypoint-initdb.d): the roles and
# databases of a compose install. The store's role is no superuser and cannot bypass row-level security:
# Ariel refuses a store role that skips the policies keeping orgs' rows apart. Each role owns its database,
# so it can create its tables (and Prefect its trusted extensions). Safe to run again: what exists is kept.
# The passwords are read from the environment inside psql (\getenv), never put on a command line.
set -euo pipefail
: "${ARIEL_STORE_PASSWORD:?set ARIEL_STORE_PASSWORD}" "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres <<'SQL'
\getenv store_password ARIEL_STORE_PASSWORD
\getenv prefect_password PREFECT_DB_PASSWORD
SELECT format('CREATE ROLE ariel LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD %L',
              :'store_password')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ariel') \gexec
SELECT 'CREATE DATABASE ariel OWNER ariel' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'ariel') \gexec
SELECT format('CREATE ROLE prefect LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L', :'prefect_password')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prefect') \gexec
SELECT 'CREATE DATABASE prefect OWNER prefect' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'prefect') \gexec
SQL
