#!/bin/sh
# Makes a runtime image's venv at /opt/ariel/venv from the wheels in /tmp/wheels and the requirements file $1,
# then takes out of it what a run never imports. Both images' venvs are made here, so they leave out the same.
#
# Only what pip installed reaches the image (the wheels, pip's caches and build leftovers stay behind in this
# stage). Left out: pip itself (a run never installs anything); what Prefect needs only as a server or a notifier:
# its database drivers and ORM (sqlalchemy, alembic, asyncpg, aiosqlite), its background task queue (pydocket
# and its redis), notifications (apprise), its UI's static files; and litellm's proxy admin UI (static pages for
# the litellm proxy server, which a run never starts; `import litellm` does not read them), in the full image.
# Prefect is in the full image only (requirements-runtime.txt), though Ariel's runs never import it: a stock
# Prefect worker given another template starts runs with `prefect flow-run execute`, as the benchmarks' baseline
# does. graphviz and dateparser stay there: Prefect imports them lazily, on a task call and a deprecation. The
# lean image has none of Prefect, so the names below are absent from it (pip skips them).
# tests/test_standby_runs.py and the other Docker tests run agents end to end in both images.
set -eu
python3 -m venv /opt/ariel/venv
/opt/ariel/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels -r "$1"
/opt/ariel/venv/bin/pip uninstall --yes --quiet \
    sqlalchemy alembic asyncpg aiosqlite mako greenlet pydocket redis burner-redis py-key-value-aio beartype \
    apprise setuptools pip
for site in /opt/ariel/venv/lib/python3*/site-packages; do
    rm -rf "$site/prefect/server/ui" "$site/prefect/server/ui-v2" "$site/litellm/proxy/_experimental/out"
done
