"""The stdio MCP servers a platform offers: an npm or PyPI package and the command that starts it.

The operator lists them in configuration (`ARIEL_STDIO_CATALOG`); `ariel build-image` installs each into the
runtime image, offline like the rest of the image, so a run starts its servers inside its own container. The
control plane speaks to an entry, to list its tools, in a throwaway container of that image (`probe_command`);
hosts that run agents as local processes start the installed command directly (`local_command`).

Example::

    >>> entry = lookup(DEFAULT_CATALOG, "everything")
    >>> entry.command
    ['mcp-server-everything', 'stdio']
    >>> probe_command(entry, "ariel-runtime:local")[-3:]
    ['ariel-runtime:local', 'mcp-server-everything', 'stdio']
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Node.js put into the runtime image when the catalog has an npm entry: the official build (it links only
# glibc, libstdc++ and libgcc_s, all in Debian bookworm), taken from the npm registry's node-linux-<arch>
# package since no image registry is reachable. 22 is an LTS line; the MCP Inspector needs at least 22.
NODE_VERSION = "22.23.5"
# The last release whose tools are `echo` and `add`; 2026.1.14 and later renamed `add` to `get-sum`.
EVERYTHING_VERSION = "2025.12.18"

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}\Z")
# name@exact-version, the name optionally scoped (@scope/name): a range would let a rebuild change the server.
NPM_SPEC = re.compile(r"^(?P<name>(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*)@(?P<version>[0-9]+\.[0-9]+\.[0-9]+"
                      r"(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?)$")
PYPI_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)(\[[A-Za-z0-9._,-]+\])?"
                       r"==(?P<version>[A-Za-z0-9.+!-]+)$")
# The program is looked up on PATH (in the image, or on a local host): a bare name, no path, no shell.
PROGRAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\Z")

# Where the runtime image keeps what the catalog installs (docker/Dockerfile puts them on PATH).
IMAGE_MCP_ROOT = "/opt/ariel/mcp"
PROBE_LABEL = "ariel.role=mcp-probe"


class StdioServer(BaseModel):
    """One stdio MCP server of the catalog.

    Exactly one of `npm` and `pypi` names the package, at an exact version. `command` starts the server
    speaking MCP on stdin/stdout; its program is one the package installs (found on PATH).

    >>> StdioServer(name="fetch", pypi="mcp-server-fetch==2025.4.7", command=["mcp-server-fetch"]).package
    'mcp-server-fetch'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="What people call it in `manage_tools add`: lower-case letters, digits and "
                      "hyphens, at most 40.", examples=["everything"])
    npm: str | None = Field(
        default=None,
        description="npm package at an exact version, installed with --omit=dev --ignore-scripts.",
        examples=[f"@modelcontextprotocol/server-everything@{EVERYTHING_VERSION}"],
    )
    pypi: str | None = Field(
        default=None,
        description="PyPI requirement pinned with ==, installed from wheels into a virtual environment of its own.",
        examples=["mcp-server-fetch==2025.4.7"],
    )
    command: list[str] = Field(
        min_length=1,
        description="Program and arguments that start the server on stdio; the program is found on PATH. For a "
        "PyPI entry, a program its package installs (only that one is put on PATH), not python -m.",
        examples=[["mcp-server-everything", "stdio"]],
    )
    description: str = Field(default="", max_length=500, description="What the server offers, for people.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r} is not a server name; use 1-40 lower-case letters, digits and hyphens, "
                             "starting with a letter or digit, e.g. everything")
        return value

    @field_validator("npm")
    @classmethod
    def _exact_npm(cls, value: str | None) -> str | None:
        if value is not None and not NPM_SPEC.match(value):
            raise ValueError(f"{value!r} is not an npm package at an exact version; write name@1.2.3 (or "
                             f"@scope/name@1.2.3), e.g. @modelcontextprotocol/server-everything@{EVERYTHING_VERSION}")
        return value

    @field_validator("pypi")
    @classmethod
    def _exact_pypi(cls, value: str | None) -> str | None:
        if value is not None and not PYPI_SPEC.match(value):
            raise ValueError(f"{value!r} is not a PyPI requirement pinned with ==; write name==1.2.3, "
                             "e.g. mcp-server-fetch==2025.4.7")
        return value

    @field_validator("command")
    @classmethod
    def _bare_program(cls, command: list[str]) -> list[str]:
        if not PROGRAM.match(command[0]):
            raise ValueError(f"the program {command[0]!r} must be a bare name found on PATH (no path, no shell), "
                             "e.g. mcp-server-everything")
        return command

    @model_validator(mode="after")
    def _one_package(self) -> StdioServer:
        if (self.npm is None) == (self.pypi is None):
            raise ValueError("give exactly one of npm (name@version) and pypi (name==version)")
        if self.pypi is not None and self.command[0].startswith(("python", "pip")):
            # Only the entry's own program is put on PATH, not its environment's interpreter.
            raise ValueError(f"a PyPI entry's command starts with a program its package installs, not "
                             f"{self.command[0]!r}")
        return self

    @property
    def package(self) -> str:
        """The package's name, without its version."""
        match = NPM_SPEC.match(self.npm) if self.npm else PYPI_SPEC.match(self.pypi or "")
        assert match is not None  # both were checked against these patterns
        return match["name"]


DEFAULT_CATALOG: tuple[StdioServer, ...] = (
    StdioServer(
        name="everything",
        npm=f"@modelcontextprotocol/server-everything@{EVERYTHING_VERSION}",
        command=["mcp-server-everything", "stdio"],
        description="The MCP project's test server: echo, add, long-running operations, images, resources.",
    ),
)


def parse_catalog(value: Any, source: str = "ARIEL_STDIO_CATALOG") -> list[StdioServer]:
    """A catalog from JSON text or already-parsed data; ValueError names the entry and field at fault.

    >>> [entry.name for entry in parse_catalog('[{"name": "x", "pypi": "x==1", "command": ["x"]}]')]
    ['x']
    >>> parse_catalog('[{"name": "x", "npm": "x@latest"}]')
    Traceback (most recent call last):
    ...
    ValueError: ARIEL_STDIO_CATALOG entry 0 ('x'): npm: 'x@latest' is not an npm package at an exact version; ...
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source} is not valid JSON ({exc.msg} at position {exc.pos}); write a list like "
                             '[{"name": "everything", "npm": "@modelcontextprotocol/server-everything@'
                             f'{EVERYTHING_VERSION}", "command": ["mcp-server-everything", "stdio"]}}]') from None
    if not isinstance(value, list | tuple):
        raise ValueError(f"{source} must be a JSON list of servers, not {type(value).__name__}")
    entries: list[StdioServer] = []
    for index, item in enumerate(value):
        if isinstance(item, StdioServer):
            entries.append(item)
            continue
        label = f"{item.get('name')!r}" if isinstance(item, dict) else type(item).__name__
        try:
            entries.append(StdioServer.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(_problem(error) for error in exc.errors())
            raise ValueError(f"{source} entry {index} ({label}): {problems}") from None
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{source} names {', '.join(map(repr, duplicates))} more than once; names must be unique")
    return entries


def _problem(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "entry"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required"
    return f"{field}: {message[0].lower()}{message[1:]}"


def lookup(catalog: Sequence[StdioServer], name: str) -> StdioServer | None:
    """The catalog's entry called `name`, if any."""
    return next((entry for entry in catalog if entry.name == name), None)


def catalog_digest(catalog: Sequence[StdioServer]) -> str:
    """A hash of what the catalog installs and runs: part of the runtime image's code hash."""
    canonical = json.dumps([entry.model_dump(exclude={"description"}) for entry in catalog], sort_keys=True)
    return hashlib.sha256(f"node {NODE_VERSION}\n{canonical}".encode()).hexdigest()


def probe_command(entry: StdioServer, image: str, *, memory: str = "512m") -> list[str]:
    """The argv that starts `entry` on stdio in a throwaway container of the runtime image.

    The container has no network, a read-only root (a small /tmp), no capabilities and the image's
    unprivileged user; it gets no environment from the caller. `-i` without `-t` lets docker forward
    SIGTERM to the container (tini passes it on), so ending the client ends the container, and `--rm`
    removes it. The label lets a sweep find any left behind.
    """
    return [
        "docker", "run", "--rm", "-i",
        "--network", "none",
        "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--memory", memory, "--pids-limit", "256",
        "--label", PROBE_LABEL, "--label", f"ariel.mcp-server={entry.name}",
        image, *entry.command,
    ]  # fmt: skip


def local_command(entry: StdioServer, folder: Path | None = None) -> list[str] | None:
    """The argv that starts `entry` on this host, for agents run as local processes; None when not installed.

    The program is looked up in `folder` (where `install_local` put the catalog: Ariel's own install folder),
    then beside Ariel's interpreter (a PyPI server installed into Ariel's environment), then on PATH.
    """
    program, *arguments = entry.command
    places: list[Path] = []
    if folder is not None:
        places += [folder / "npm" / "node_modules" / ".bin", folder / "bin"]
    places.append(Path(sys.executable).parent)
    for place in places:
        candidate = place / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate), *arguments]
    found = shutil.which(program)
    return [found, *arguments] if found else None


def installed_command(entry: StdioServer, folder: Path) -> list[str]:
    """Where `install_local(catalog, folder)` puts `entry`'s program: the argv a local-process run starts.

    Known before the install happens, so agents compiled before a host's first stdio server still find it.
    """
    program, *arguments = entry.command
    place = folder / "npm" / "node_modules" / ".bin" if entry.npm else folder / "bin"
    return [str(place / program), *arguments]
