#!/bin/bash
# Run once by the PostgreSQL container on its first start (/docker-entrypoint-initdb.d): the roles and
# databases of a compose install. The store's role is no superuser and cannot bypass row-level security:
# Ariel refuses a store role that skips the policies keeping orgs' rows apart. Each role owns its database,
# so it can create its tables (and Prefect its trusted extensions).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v store_password="${ARIEL_STORE_PASSWORD:?}" -v prefect_password="${PREFECT_DB_PASSWORD:?}" <<'SQL'
CREATE ROLE ariel LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD :'store_password';
CREATE DATABASE ariel OWNER ariel;
CREATE ROLE prefect LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
SQL
