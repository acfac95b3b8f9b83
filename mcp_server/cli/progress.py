"""Progress for commands that can take a while: said only when a step is slow, so quick commands stay quiet.

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> with slow_step("opening the store", out=out, after=0.0) as _:
    ...     time.sleep(0.05)
    >>> lines = out.getvalue().splitlines()
    >>> lines[0], lines[1].startswith("ariel: opening the store: done in ")
    ('ariel: opening the store …', True)
    >>> quiet = io.StringIO()
    >>> with slow_step("reading a file", out=quiet):
    ...     pass
    >>> quiet.getvalue()
    ''
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

# A pause longer than this reads as a hang to a person at a terminal.
SAY_AFTER_SECONDS = 2.0


@contextmanager
def slow_step(what: str, out: TextIO | None = None, after: float = SAY_AFTER_SECONDS) -> Iterator[None]:
    """Say `what` is under way once it has taken `after` seconds, and how long it took when it ends (on stderr, so
    the command's own output stays clean for scripts)."""
    stream = out if out is not None else sys.stderr
    started = time.monotonic()
    said = threading.Event()

    def say() -> None:
        print(f"ariel: {what} …", file=stream, flush=True)
        said.set()

    timer = threading.Timer(after, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()  # a `say` under way finishes first, so its line comes before "done"
        if said.is_set():
            print(f"ariel: {what}: done in {time.monotonic() - started:.1f} s", file=stream, flush=True)
