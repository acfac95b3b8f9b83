"""Fixtures shared by every test: real services, each started once per session; and the lanes' markers."""

from __future__ import annotations

import builtins
import dis
import inspect
import os
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

import pytest

from deployments.images.runtime_image import docker_available
from tests.support import S3Server, http_service, need, prefect_server, s3_server

# Suites make hundreds of calls against one app; the rate limits have their own tests (test_rate_limits).
os.environ.setdefault("ARIEL_RATE_LIMIT_PER_MINUTE", "0")
os.environ.setdefault("ARIEL_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE", "0")

# What makes a test slow, by the function it calls: a helper, a fixture (below session scope: a session
# fixture's cost is paid once, whoever asks first) or, for what shows no such sign, the test itself (a
# test may also carry @pytest.mark.slow). Helpers of our own (tests.*) are followed into, so a new test
# that runs a flow or starts a process is marked without anyone remembering to. Times measured on 2
# shared cores; see `slow` in pyproject.toml.
SLOW_CALLS: dict[str, str] = {
    "subprocess.Popen": "starts a server, a worker host or `ariel up` and waits for it (10 s to minutes)",
    "tests.flows.support.play": "runs the agent flow in a new interpreter, as a worker does (3-10 s each)",
    "tests.mcp_server.cli.test_cli.ariel": "runs the `ariel` CLI in a new interpreter that imports Prefect (3-15 s)",
    "tests.deployments.runs.test_run_reading.runs": "plays a dozen flows, one of 10,000 log lines (20-50 s)",
    "tests.mcp_server.tools.test_agent_lifecycle.test_runs_that_cannot_start_are_diagnosed_with_their_cause":
        "waits 21 s for its runs to count as late",
    "tests.mcp_server.services.test_agent_service.test_an_agent_prefect_refused_is_not_left_in_the_store":
        "waits out the Prefect client's retries against a port nobody listens on (3 s)",
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _check_slow_calls_exist()
    for item in items:
        if not isinstance(item, pytest.Function):
            continue  # doctests: none starts anything
        if _needs_docker(item):
            item.add_marker(pytest.mark.docker)
        reasons = {SLOW_CALLS[name] for name in _called(item) if name in SLOW_CALLS}
        if reasons:
            item.add_marker(pytest.mark.slow(reason="; ".join(sorted(reasons))))


def _needs_docker(item: pytest.Function) -> bool:
    if "docker_engine" in item.fixturenames:
        return True
    # A fixture parametrized by pool type asks for docker_engine by name for its "docker" pool
    # (tests/test_end_to_end.py's `stack`), which `fixturenames` cannot see.
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "docker" in callspec.params.values()


def _called(item: pytest.Function) -> set[str]:
    """Qualified names of what the test and its fixtures below session scope are or call, through our helpers."""
    # `_fixtureinfo` is private, but it is the only record of which definition serves each fixture name.
    fixtures = [d.func for ds in item._fixtureinfo.name2fixturedefs.values() for d in ds if d.scope != "session"]
    pending = [inspect.unwrap(function) for function in [item.function, *fixtures]]
    seen: set[Any] = set()
    while pending:
        function = pending.pop()
        if function in seen:
            continue
        seen.add(function)
        if inspect.isfunction(function) and function.__module__.startswith("tests."):
            pending += [inspect.unwrap(callee) for callee in _referenced(function)]
    return {_qualified(function) for function in seen}


@cache
def _referenced(function: Any) -> frozenset[Any]:
    return frozenset(_loaded(function.__code__, function.__globals__))


def _loaded(code: CodeType, namespace: dict[str, Any]) -> Iterator[Any]:
    """Functions and classes `code` loads by a global name or a module's attribute (`support.play`)."""
    loaded: Any = None
    for instruction in dis.get_instructions(code):
        if instruction.opname == "LOAD_GLOBAL":
            loaded = namespace.get(instruction.argval, getattr(builtins, instruction.argval, None))
        elif instruction.opname in ("LOAD_ATTR", "LOAD_METHOD") and isinstance(loaded, ModuleType):
            loaded = getattr(loaded, instruction.argval, None)
        else:
            loaded = None
        if inspect.isfunction(loaded) or inspect.isclass(loaded):
            yield loaded
    for constant in code.co_consts:
        if isinstance(constant, CodeType):  # lambdas, nested functions, comprehensions
            yield from _loaded(constant, namespace)


def _qualified(function: Any) -> str:
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', '')}"


def _check_slow_calls_exist() -> None:
    """A renamed helper or test would silently leave the fast lane slow again: fail collection instead."""
    for name in SLOW_CALLS:
        module_name, _, attribute = name.rpartition(".")
        module = sys.modules.get(module_name)
        if module is not None and not hasattr(module, attribute):
            raise pytest.UsageError(f"tests/conftest.py's SLOW_CALLS names {name!r}, which no longer exists")


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server on loopback for the whole session; each test takes a bucket of its own."""
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
def docker_engine() -> None:
    need(docker_available(), "no Docker engine answers (start dockerd; see the README)")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server for the whole session; its API URL."""
    from prefect.logging.handlers import APILogWorker

    with prefect_server(tmp_path_factory.mktemp("prefect")) as api_url:
        yield api_url
        # Send in-process flows' queued log lines while the server still answers.
        APILogWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def service_host() -> Iterator[str]:
    """'127.0.0.1:PORT' of a loopback HTTP service answering JSON with answer 42."""
    with http_service() as host:
        yield host


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "ariel-home"
