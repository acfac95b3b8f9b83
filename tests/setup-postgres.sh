#!/usr/bin/env bash
# A local PostgreSQL for the store tests: installs Debian's postgresql when
# missing (root), starts the cluster, and makes a non-superuser role that may
# create databases. Non-superuser on purpose: superusers bypass row-level
# security, which the tests must see enforced.
#
# Usage: tests/setup-postgres.sh [--optional]
# The tests find it at ARIEL_TEST_POSTGRES_URL (default below).
set -euo pipefail

optional=false
[ "${1:-}" = "--optional" ] && optional=true
give_up() {
  echo "setup-postgres: $1" >&2
  if $optional; then echo "setup-postgres: the PostgreSQL store tests will skip." >&2; exit 0; fi
  exit 1
}

# The server binary, not pg_ctlcluster: postgresql-common can outlive the server package.
if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || give_up "PostgreSQL is not installed (apt-get install postgresql)"
  echo "setup-postgres: installing postgresql ..."
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
fi

if ! pg_isready -q -h 127.0.0.1; then
  [ "$(id -u)" = 0 ] || give_up "PostgreSQL is not running on 127.0.0.1:5432; start it"
  version="$(pg_lsclusters -h | awk 'NR==1 {print $1}')"
  cluster="$(pg_lsclusters -h | awk 'NR==1 {print $2}')"
  [ -n "$version" ] || give_up "no PostgreSQL cluster exists (pg_createcluster)"
  echo "setup-postgres: starting cluster $version/$cluster ..."
  pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start
  for _ in $(seq 40); do pg_isready -q -h 127.0.0.1 && break; sleep 0.25; done
  pg_isready -q -h 127.0.0.1 || give_up "PostgreSQL did not start"
fi

if [ "$(id -u)" = 0 ]; then
  su postgres -c "psql -q -v ON_ERROR_STOP=1 -d postgres" <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ariel_test') THEN
    CREATE ROLE ariel_test LOGIN PASSWORD 'ariel_test' CREATEDB NOSUPERUSER NOBYPASSRLS;
  END IF;
  -- A role that row-level security does not bind: what a SaaS start must refuse as the store's.
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ariel_test_bypass') THEN
    CREATE ROLE ariel_test_bypass LOGIN PASSWORD 'ariel_test_bypass' NOSUPERUSER BYPASSRLS IN ROLE ariel_test;
  END IF;
END $$;
-- DROP DATABASE ... WITH (FORCE) must also end an autovacuum worker in the test's database, which runs as no
-- role a member could signal: pg_signal_backend lets the test role end it (it still cannot end superusers').
GRANT pg_signal_backend TO ariel_test;
SQL
fi
echo "setup-postgres: PostgreSQL answers on 127.0.0.1:5432 (role ariel_test)"
