#!/bin/bash
# The official postgres image's entrypoint, in the part docker/compose.yaml uses: on an empty PGDATA, make
# the cluster with POSTGRES_USER (default postgres) and POSTGRES_PASSWORD, run /docker-entrypoint-initdb.d's
# *.sh and *.sql against a server that listens on its socket only, then start PostgreSQL for real.
set -Eeuo pipefail

# Written once the init scripts have all succeeded: a cluster without it had its first start cut short (a
# failed script, a kill), and would otherwise come up on every restart without its roles.
initialized="$PGDATA/.ariel-initialized"
if [ "${1:-}" = "postgres" ] && [ -s "$PGDATA/PG_VERSION" ] && [ ! -e "$initialized" ]; then
    echo "$0: $PGDATA holds a cluster whose first start did not finish (an init script failed or was stopped," \
        "see the lines before this); remove the volume (docker-compose ... down -v) and start again" >&2
    exit 1
fi
if [ "${1:-}" = "postgres" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD: the password of the superuser of the cluster}"
    export POSTGRES_USER="${POSTGRES_USER:-postgres}" POSTGRES_DB="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}"
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start >/dev/null
    export PGHOST=/var/run/postgresql PGPORT="${PGPORT:-5432}"
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sh) echo "$0: running $script"; if [ -x "$script" ]; then "$script"; else . "$script"; fi ;;
            *.sql) echo "$0: running $script"; psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$script" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    unset PGHOST
    touch "$initialized"
    echo "$0: PostgreSQL is initialized"
fi
exec "$@"
