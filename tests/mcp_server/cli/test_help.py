"""`ariel --help` answers at once: it imports nothing heavy (Prefect alone costs seconds of CPU on a loaded host)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("prefect", "litellm", "fastmcp", "sqlalchemy", "docker")


@pytest.mark.parametrize("args", [["--help"], ["up", "--help"], ["provider", "--help"], ["worker", "--help"],
                                  ["admin", "limits", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    probe = ("import sys\nfrom mcp_server.cli import main\n"
             f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
             f"print(sorted(name for name in {HEAVY!r} if name in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert "usage: ariel" in done.stdout, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
