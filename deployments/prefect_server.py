"""Prefect's server as `ariel up` runs it: `prefect server start`, its garbage collector off the event loop, and
on SQLite its writes waiting for the write lock instead of failing.

`python -m deployments.prefect_server server start …` takes the arguments of `prefect server start` and
serves exactly as it does, with two changes.

First, Python's cyclic garbage collector runs in a thread of its own instead of in whichever thread happens
to allocate, which is mostly the event loop's. Why: on SQLite, each of the server's database connections
(aiosqlite) has a thread that holds that connection's SQLite mutex for as long as it waits for the write
lock, up to the busy timeout Prefect fixes at 60 s. When the collector finds a cursor of such a connection
in a reference cycle (tracebacks of `database is locked` make plenty), freeing it resets its statement,
which needs that mutex. Done on the event loop's thread, that froze the whole server, including the request
holding the write lock, so the wait could only end by timing out: 60-s stalls, the queued writes failing
with `database is locked`, and per-minute runs started minutes late on the desktop (`bench/desktop_load.py`).
Seen with py-spy: the loop's thread in `gc_collect_main` → `cursor_dealloc` → `sqlite3_reset` →
`pthread_mutex_lock` for the whole stall. In a thread of its own, the same free waits alone and the loop
goes on.

So finalizers (`__del__`, weakref callbacks, the `finally` of an abandoned coroutine) run in that thread,
beside the loop; before, they ran in whichever thread allocated, the loop's or a connection's.

Second, on SQLite every transaction Prefect opens takes the write lock as it begins (`BEGIN IMMEDIATE`), as
Prefect's own already do where they lock rows (`with_for_update`); see `write_transactions_lock_first`.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

# How often the collector thread looks at the allocation counts; a generation is collected when its count
# passes its threshold (`gc.get_threshold()`), as the automatic collector does.
CHECK_SECONDS = 0.05
# CPython's automatic collector also defers a full collection until the objects waiting for one are a
# quarter of the long-lived ones, a count Python cannot read; a floor between full collections stands in
# for it. A full one holds the interpreter ~150 ms on Prefect's server (~280,000 objects once started).
FULL_COLLECTION_SECONDS = 60.0
SLOW_COLLECTION_SECONDS = 5.0  # a collection this long waited for something: said in the server's log


def collect_in_own_thread() -> threading.Thread:
    """Turn off the automatic collector and collect from a daemon thread instead; returns that thread."""
    gc.disable()
    collector = threading.Thread(target=_collect_forever, name="ariel-gc", daemon=True)
    collector.start()
    return collector


def _collect_forever() -> None:
    young_threshold, middle_threshold, old_threshold = gc.get_threshold()
    last_full = time.monotonic()
    try:
        while True:
            time.sleep(CHECK_SECONDS)
            young, middle, old = gc.get_count()
            if young < young_threshold:
                continue
            began = time.monotonic()
            if old >= old_threshold and began - last_full >= FULL_COLLECTION_SECONDS:
                gc.collect(2)
                last_full = time.monotonic()
            else:
                gc.collect(1 if middle >= middle_threshold else 0)
            if (took := time.monotonic() - began) > SLOW_COLLECTION_SECONDS:
                # What would have been a stall of the whole server: on record in its log.
                print(f"ariel: a garbage collection took {took:.1f} s (a finalizer waited, such as a database "
                      "cursor's for its connection, itself waiting for SQLite's write lock); requests went on "
                      "meanwhile", flush=True)
    finally:  # should this thread ever end, the automatic collector takes over again
        gc.enable()


def write_transactions_lock_first() -> None:
    """On SQLite, begin each of the server's transactions with `BEGIN IMMEDIATE`, not only those that lock rows.

    Prefect opens most write transactions deferred: they read first and ask for SQLite's write lock at their
    first write. When another connection has committed a write in between, SQLite cannot wait for that lock
    (the transaction's snapshot is stale) and fails at once with `database is locked`, whatever the busy
    timeout; Prefect answers 503, and its client asks again after 2, 4, 8, 16 s. Twenty `run_agent` calls at
    once on the desktop made their runs over 60 s, three of them after 28 to 59 s of such waits (`bench/
    run_latency.py`'s burst), 166 refusals in all. Begun immediate, a transaction waits for the lock at its start
    (Prefect's busy timeout) and its snapshot is never stale: the same burst was made within ~2 s, with no
    refusal. The price: a transaction that only reads (a worker's poll, `get_scheduled_flow_runs`) now waits for a
    write in progress instead of reading beside it under WAL; on SQLite writes come one at a time anyway, and none
    holds the lock for long. PostgreSQL's configuration is untouched. Prefect 3.8.8's `AioSqliteConfiguration`
    (pinned)."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    deferred_or_immediate = AioSqliteConfiguration.begin_transaction

    @asynccontextmanager
    async def immediate(self: AioSqliteConfiguration, session: Any, with_for_update: bool = False,
                        ) -> AsyncIterator[Any]:
        async with deferred_or_immediate(self, session, with_for_update=True) as transaction:
            yield transaction

    AioSqliteConfiguration.begin_transaction = immediate  # type: ignore[method-assign]


def server_argv(port: int) -> list[str]:
    """The command that serves Prefect's API this way on 127.0.0.1:`port`, in this interpreter."""
    return [sys.executable, "-m", "deployments.prefect_server", "server", "start", "--host", "127.0.0.1",
            "--port", str(port)]


def main() -> None:
    collect_in_own_thread()
    # Imported here, not above: with the collector already off for Prefect's own imports, and `server_argv`
    # importable (by `ariel up`, the tests) without loading Prefect's CLI.
    from prefect.cli import app  # Prefect's own `prefect` command, given this module's arguments

    write_transactions_lock_first()

    app()


if __name__ == "__main__":
    main()
