"""Prefect's server as `ariel up` runs it: garbage is collected off the event loop's thread, and on SQLite a
transaction that read before another request's write still writes.

Each case runs in a Python process of its own, since it turns the automatic collector off.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A writer holds SQLite's write lock in the main thread (the event loop's, in the server); a second
# connection waits for the lock in a thread of its own, as aiosqlite does, holding its SQLite mutex. A cursor
# of that second connection is garbage in a reference cycle. The main thread then allocates, which is when
# the automatic collector would run, and commits, which is what the waiter needs.
WAITER_AND_GARBAGE = """
import sqlite3, sys, threading
from deployments.prefect_server import collect_in_own_thread

collect_in_own_thread()
path = sys.argv[1]
holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
holder.execute("PRAGMA journal_mode = WAL")
holder.execute("CREATE TABLE t (x)")
waiter = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
cursor = waiter.execute("SELECT 1 UNION ALL SELECT 2")  # left mid-way: freeing it resets its statement
cycle = [cursor]
cycle.append(cycle)
del cursor, cycle

holder.execute("BEGIN IMMEDIATE")
began = threading.Event()
waiter.set_trace_callback(lambda statement: began.set())
outcome = []

def wait_for_the_lock():
    try:
        waiter.execute("BEGIN IMMEDIATE")
        outcome.append("got the lock")
    except sqlite3.OperationalError as error:
        outcome.append(str(error))

thread = threading.Thread(target=wait_for_the_lock)
thread.start()
began.wait()
thread.join(0.3)  # into SQLite's busy wait
garbage = [[] for _ in range(20_000)]
holder.execute("INSERT INTO t VALUES (1)")
holder.execute("COMMIT")
thread.join()
print(outcome[0])
"""

CYCLES_FREED = """
import gc, sys, threading, weakref
from deployments.prefect_server import collect_in_own_thread

collect_in_own_thread()
assert not gc.isenabled()

class Node:
    pass

freed = threading.Event()
node = Node()
node.self = node
watch = weakref.ref(node, lambda _: freed.set())
del node
garbage = [[] for _ in range(20_000)]
print("freed" if freed.wait(60) else "still alive")
"""


# A transaction of Prefect's server (its own configuration, its own engine) reads; another request's connection
# then writes; then the transaction writes. The other connection waits half a second at most.
READ_THEN_WRITE = '''
import asyncio, sqlite3, sys
import sqlalchemy as sa
from prefect.server.database.configurations import AioSqliteConfiguration
from deployments.prefect_server import write_transactions_lock_first

path, mode = sys.argv[1], sys.argv[2]
setup = sqlite3.connect(path, isolation_level=None)
setup.execute("PRAGMA journal_mode = WAL")
setup.execute("CREATE TABLE runs (x)")
setup.close()
if mode == "as ariel runs it":
    write_transactions_lock_first()


async def main() -> None:
    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{path}")
    session = await config.session(await config.engine())
    other = sqlite3.connect(path, timeout=0.5, isolation_level=None)  # another request's connection
    async with session, config.begin_transaction(session):
        await session.execute(sa.text("SELECT count(*) FROM runs"))  # a transaction reads first
        try:
            other.execute("INSERT INTO runs VALUES (1)")
            print("the other wrote", end="; ")
        except sqlite3.OperationalError as error:
            print(f"the other waited ({error})", end="; ")
        try:
            await session.execute(sa.text("INSERT INTO runs VALUES (2)"))
            print("this one wrote")
        except sa.exc.OperationalError as error:
            print(f"this one was refused ({error.orig})")

asyncio.run(main())
'''

PREFECT_SERVER_ENTRY = """
import gc, threading
import prefect.cli
from deployments import prefect_server
from prefect.server.database.configurations import AioSqliteConfiguration

prefect.cli.app = lambda: print(gc.isenabled(), [t.name for t in threading.enumerate() if t.name == "ariel-gc"],
                                AioSqliteConfiguration.begin_transaction.__name__)
prefect_server.main()
"""


def run_child(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_a_writer_on_the_loop_thread_commits_while_a_cursor_of_a_connection_waiting_for_its_lock_is_freed(
    tmp_path: Path,
) -> None:
    # With the collector on the main thread, freeing that cursor waits for the waiter's mutex, the waiter
    # waits for the commit that the main thread never reaches: "database is locked" after the busy timeout.
    assert run_child(WAITER_AND_GARBAGE, str(tmp_path / "prefect.db")) == "got the lock"


def test_garbage_in_reference_cycles_is_still_collected() -> None:
    assert run_child(CYCLES_FREED) == "freed"


def test_the_prefect_server_command_turns_the_automatic_collector_off_before_prefect_runs() -> None:
    assert run_child(PREFECT_SERVER_ENTRY) == "False ['ariel-gc'] immediate"


def test_a_transaction_that_read_before_another_requests_write_still_writes(tmp_path: Path) -> None:
    # Begun immediate, it holds the write lock from its start: the other request waits for it (Prefect's busy
    # timeout is 60 s; here half a second), and its snapshot never goes stale.
    assert run_child(READ_THEN_WRITE, str(tmp_path / "prefect.db"), "as ariel runs it") == (
        "the other waited (database is locked); this one wrote")


def test_prefects_own_deferred_transaction_is_refused_at_once_after_another_requests_write(tmp_path: Path) -> None:
    # Why Ariel's server begins them immediate: SQLite cannot wait for a lock on a stale snapshot, whatever the busy
    # timeout, so Prefect answers 503 and its client asks again after 2, 4, 8, 16 s. Should Prefect change this,
    # this case says so.
    assert run_child(READ_THEN_WRITE, str(tmp_path / "prefect.db"), "stock") == (
        "the other wrote; this one was refused (database is locked)")
