"""Secret key files under `<home>/keys/`: made on first use, readable by their owner alone.

A desktop install keeps its control-plane secrets (the Prefect server's auth
string, and the keys that sign and seal) in files rather than in the
environment: they survive restarts and never show in `ps` or a child's
environment. SaaS installs give them as settings instead.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> first = secret_file(folder / "keys" / "demo", lambda: b"s3cret")
    >>> first == secret_file(folder / "keys" / "demo", lambda: b"other")
    True
    >>> oct((folder / "keys" / "demo").stat().st_mode & 0o777)
    '0o600'
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


class KeyFileError(Exception):
    """A key file cannot be read or made; the message names the file and what to do."""


def secret_file(path: Path, make: Callable[[], bytes]) -> bytes:
    """The contents of the key file at `path`; made from `make()` (mode 0600, folder 0700) when missing.

    Two processes starting at once agree on one value: the file is created exclusively, and the loser reads
    the winner's.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _read(path)
        with os.fdopen(descriptor, "wb") as file:
            file.write(make())
        return _read(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read or create the key file {path}: {exc.strerror}; check the folder's "
                           "owner and permissions") from None


def _read(path: Path) -> bytes:
    content = path.read_bytes()
    for _ in range(20):  # another process may have created it and not yet written it
        if content:
            return content
        time.sleep(0.05)
        content = path.read_bytes()
    if not content:
        # A crash between create and write leaves an empty file; a key of nothing must not be used.
        raise KeyFileError(f"the key file {path} is empty; delete it and start again to make a new one")
    return content
