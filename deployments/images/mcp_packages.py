"""Installing the stdio catalog's packages: npm ones with the host's npm, into a folder.

The runtime image's build context gets that folder (and a Node.js binary from the npm registry's
node-linux-<arch> package), so `docker build` itself reaches no network. Hosts that run agents as local
processes get the same folder with `install_local`, plus a virtual environment per PyPI entry.

Example (it reaches the npm registry, so this is no doctest)::

    install_local(DEFAULT_CATALOG, Path.home() / ".ariel" / "mcp", progress=print)
    local_command(DEFAULT_CATALOG[0], Path.home() / ".ariel" / "mcp")
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from deployments.exceptions import ImageBuildFailed
from deployments.images.stdio_catalog import NODE_VERSION, NPM_SPEC, StdioServer

Progress = Callable[[str], None]
# Docker's and Python's names of a machine → the suffix of Node's official build on the npm registry.
NODE_ARCHES = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
# Not worth a network round trip each install, nor a line of noise.
_NPM_FLAGS = ["--omit=dev", "--no-audit", "--no-fund", "--no-update-notifier", "--loglevel=warn"]


def npm_install(specs: Sequence[str], prefix: Path, progress: Progress, *, scripts: bool = False) -> None:
    """Install npm packages `name@version` (exact versions) into `prefix`/node_modules.

    Install scripts are not run (`--ignore-scripts`): they would run on this host, with its network,
    and build for it rather than for the image; the catalog's servers are plain JavaScript.

    Raises:
        ImageBuildFailed: npm is missing or the install failed (its output is in the message).
    """
    npm = shutil.which("npm")
    if npm is None:
        raise ImageBuildFailed("npm is not installed, and the stdio catalog has npm packages; install Node.js and "
                               "npm (Debian: apt-get install -y nodejs npm) or drop the npm entries from "
                               "ARIEL_STDIO_CATALOG")
    dependencies = {}
    for spec in specs:
        match = NPM_SPEC.match(spec)
        if match is None:
            raise ImageBuildFailed(f"{spec!r} is not an npm package at an exact version (name@1.2.3)")
        dependencies[match["name"]] = match["version"]
    prefix.mkdir(parents=True, exist_ok=True)
    # A package.json of exact versions: `npm install name@version` would save a ^range.
    (prefix / "package.json").write_text(json.dumps(
        {"name": "ariel-mcp-servers", "private": True, "dependencies": dependencies}, indent=2) + "\n")
    command = [npm, "install", "--prefix", str(prefix), *_NPM_FLAGS, *([] if scripts else ["--ignore-scripts"])]
    progress(f"  npm install {' '.join(specs)} ...")
    # The host's environment as is: npm needs its proxy and CA settings to reach the registry.
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    output = (process.stdout + process.stderr).strip()
    for line in output.splitlines()[-10:]:
        progress("    " + line)
    if process.returncode != 0:
        raise ImageBuildFailed(f"npm install {' '.join(specs)} failed (exit {process.returncode}); check that the "
                               f"npm registry is reachable and the versions exist:\n{output[-2000:]}")


def node_binary(arch: str, cache: Path, progress: Progress) -> Path:
    """Node.js NODE_VERSION for `arch` (a machine name like x86_64): the official build, from the npm registry.

    It needs only glibc ≥ 2.28, libstdc++ and libgcc_s, which Debian bookworm has.
    """
    suffix = NODE_ARCHES.get(arch)
    if suffix is None:
        raise ImageBuildFailed(f"no Node.js build for the Docker engine's architecture {arch!r}; "
                               f"known: {', '.join(sorted(NODE_ARCHES))}")
    prefix = cache / f"node-{NODE_VERSION}-{suffix}"
    binary = prefix / "node_modules" / f"node-linux-{suffix}" / "bin" / "node"
    if not binary.is_file():
        progress(f"fetching Node.js {NODE_VERSION} ({suffix}) from the npm registry ...")
        shutil.rmtree(prefix, ignore_errors=True)
        npm_install([f"node-linux-{suffix}@{NODE_VERSION}"], prefix, progress)
    if not binary.is_file():
        raise ImageBuildFailed(f"node-linux-{suffix}@{NODE_VERSION} installed no bin/node under {prefix}")
    return binary


def install_local(catalog: Sequence[StdioServer], folder: Path, progress: Progress = print) -> None:
    """Install the catalog on this host, for agents run as local processes (no Docker).

    npm entries go to `folder`/npm (they run with the host's node); each PyPI entry to a virtual environment
    `folder`/pypi/<name> made by this interpreter, its command's program linked into `folder`/bin.
    `stdio_catalog.local_command(entry, folder)` then finds them.
    """
    npm = [entry.npm for entry in catalog if entry.npm]
    if npm:
        npm_install(npm, folder / "npm", progress)
    bin_folder = folder / "bin"
    for entry in catalog:
        if entry.pypi is None:
            continue
        venv = folder / "pypi" / entry.name
        progress(f"  pip install {entry.pypi} (its own environment) ...")
        if not (venv / "bin" / "python").exists():
            _run([sys.executable, "-m", "venv", str(venv)], f"making a virtual environment for {entry.name!r}")
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", entry.pypi], f"pip install {entry.pypi}")
        link_program(venv / "bin", entry.command[0], bin_folder)


def link_program(venv_bin: Path, program: str, bin_folder: Path) -> None:
    """Link `program` of a virtual environment into `bin_folder`: only it, not its dependencies' programs.

    Raises:
        ImageBuildFailed: the environment has no such program.
    """
    source = venv_bin / program
    if not source.is_file():
        raise ImageBuildFailed(f"{venv_bin.parent} has no program {program!r}; the catalog entry's command must "
                               "start with a program its package installs")
    bin_folder.mkdir(parents=True, exist_ok=True)
    link = bin_folder / program
    link.unlink(missing_ok=True)
    link.symlink_to(source)


def _run(command: list[str], what: str) -> None:
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    if process.returncode != 0:
        output = (process.stdout + process.stderr)[-2000:]
        raise ImageBuildFailed(f"{what} failed (exit {process.returncode}):\n{output}")
