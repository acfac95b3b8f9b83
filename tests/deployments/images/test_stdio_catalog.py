"""The stdio catalog: what operators configure, what the image holds, and how the control plane starts an entry."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import docker
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import TextContent
from pydantic import ValidationError

from deployments.exceptions import ImageBuildFailed
from deployments.images.mcp_packages import link_program
from deployments.images.runtime_image import RuntimeImageBuilder
from deployments.images.stdio_catalog import (
    DEFAULT_CATALOG,
    EVERYTHING_VERSION,
    PROBE_LABEL,
    StdioServer,
    local_command,
    lookup,
    probe_command,
)
from mcp_server.settings import ArielSettings

EVERYTHING = {"name": "everything", "npm": f"@modelcontextprotocol/server-everything@{EVERYTHING_VERSION}",
              "command": ["mcp-server-everything", "stdio"]}
FETCH = {"name": "fetch", "pypi": "mcp-server-fetch==2025.4.7", "command": ["mcp-server-fetch"]}


def settings(monkeypatch: pytest.MonkeyPatch, catalog: str | None) -> ArielSettings:
    if catalog is None:
        monkeypatch.delenv("ARIEL_STDIO_CATALOG", raising=False)
    else:
        monkeypatch.setenv("ARIEL_STDIO_CATALOG", catalog)
    return ArielSettings()


def test_the_default_catalog_offers_server_everything_pinned_on_stdio(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = lookup(settings(monkeypatch, None).stdio_catalog, "everything")
    assert entry == lookup(DEFAULT_CATALOG, "everything")
    assert entry is not None
    assert entry.npm == "@modelcontextprotocol/server-everything@2025.12.18"
    assert entry.package == "@modelcontextprotocol/server-everything"
    assert entry.command == ["mcp-server-everything", "stdio"]


def test_the_catalog_setting_replaces_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = settings(monkeypatch, json.dumps([FETCH])).stdio_catalog
    assert catalog == [StdioServer.model_validate(FETCH)]
    assert settings(monkeypatch, "[]").stdio_catalog == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{not json", "ARIEL_STDIO_CATALOG is not valid JSON (Expecting property name enclosed in double quotes at "
                      "position 1); write a list like"),
        ('{"name": "x"}', "ARIEL_STDIO_CATALOG must be a JSON list of servers, not dict"),
        ('[{"name": "Everything", "npm": "a@1.0.0", "command": ["a"]}]',
         "entry 0 ('Everything'): name: 'Everything' is not a server name; use 1-40 lower-case letters"),
        ('[{"name": "e", "npm": "@modelcontextprotocol/server-everything@^2025.1.0", "command": ["a"]}]',
         "entry 0 ('e'): npm: '@modelcontextprotocol/server-everything@^2025.1.0' is not an npm package at an "
         "exact version; write name@1.2.3"),
        ('[{"name": "f", "pypi": "mcp-server-fetch>=1", "command": ["f"]}]',
         "entry 0 ('f'): pypi: 'mcp-server-fetch>=1' is not a PyPI requirement pinned with ==; write name==1.2.3"),
        ('[{"name": "f", "pypi": "f==1", "npm": "f@1.0.0", "command": ["f"]}]',
         "entry 0 ('f'): entry: give exactly one of npm (name@version) and pypi (name==version)"),
        ('[{"name": "f", "pypi": "f==1"}]', "entry 0 ('f'): command: required"),
        ('[{"name": "f", "pypi": "f==1", "command": ["/bin/sh", "-c", "f"]}]',
         "entry 0 ('f'): command: the program '/bin/sh' must be a bare name found on PATH"),
        ('[{"name": "f", "pypi": "f==1", "command": ["python", "-m", "f"]}]',
         "entry 0 ('f'): entry: a PyPI entry's command starts with a program its package installs, not 'python'"),
        ('[{"name": "f", "pypi": "f==1", "command": ["f"], "env": {}}]', "entry 0 ('f'): env: extra inputs"),
        ('[{"name": "f", "pypi": "f==1", "command": ["f"]}, {"name": "f", "pypi": "g==1", "command": ["g"]}]',
         "ARIEL_STDIO_CATALOG names 'f' more than once; names must be unique"),
    ],
)
def test_a_bad_catalog_setting_is_refused_naming_the_entry_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(monkeypatch, value)
    assert message in str(refused.value)


def test_the_image_hash_changes_with_the_catalog() -> None:
    def code_hash(*catalog: StdioServer) -> str:
        return RuntimeImageBuilder(tag="t", base_image="b", catalog=catalog).code_hash("sha256:base")

    everything = StdioServer.model_validate(EVERYTHING)
    assert code_hash(everything) == code_hash(*DEFAULT_CATALOG)
    newer = everything.model_copy(update={"npm": "@modelcontextprotocol/server-everything@2026.8.31"})
    assert code_hash(newer) != code_hash(everything)
    assert code_hash(everything.model_copy(update={"command": ["mcp-server-everything"]})) != code_hash(everything)
    assert code_hash(everything, StdioServer.model_validate(FETCH)) != code_hash(everything)
    # What people read is no part of the image.
    assert code_hash(everything.model_copy(update={"description": "other words"})) == code_hash(everything)


def test_the_probe_runs_the_entry_in_a_throwaway_container_without_network() -> None:
    argv = probe_command(DEFAULT_CATALOG[0], "ariel-runtime:local")
    assert argv[:4] == ["docker", "run", "--rm", "-i"]
    assert argv[argv.index("--network") + 1] == "none"
    assert {"--read-only", "ALL", "no-new-privileges", PROBE_LABEL} <= set(argv)
    assert "-t" not in argv and "-e" not in argv and "--env" not in argv
    assert argv[-3:] == ["ariel-runtime:local", "mcp-server-everything", "stdio"]


def test_a_local_host_finds_the_command_in_ariels_folder_or_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = StdioServer(name="tool", pypi="some-tool==1.0", command=["some-tool", "--stdio"])
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    assert local_command(entry, tmp_path / "ariel") is None
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name in ("some-tool", "python", "pip3", "activate"):
        (venv_bin / name).write_text("#!/bin/sh\n")
        (venv_bin / name).chmod(0o755)
    with pytest.raises(ImageBuildFailed, match="has no program 'other-tool'; the catalog entry's command must"):
        link_program(venv_bin, "other-tool", tmp_path / "ariel" / "bin")
    link_program(venv_bin, "some-tool", tmp_path / "ariel" / "bin")
    assert os.listdir(tmp_path / "ariel" / "bin") == ["some-tool"]
    assert local_command(entry, tmp_path / "ariel") == [str(tmp_path / "ariel" / "bin" / "some-tool"), "--stdio"]
    (tmp_path / "path").mkdir()
    (tmp_path / "path" / "some-tool").symlink_to(venv_bin / "some-tool")
    assert local_command(entry) == [str(tmp_path / "path" / "some-tool"), "--stdio"]


async def test_server_everything_speaks_mcp_over_stdio_in_the_runtime_image(docker_engine: None) -> None:
    builder = RuntimeImageBuilder(tag="ariel-runtime:local", base_image="ariel-base:bookworm")
    builder.ensure(progress=lambda _line: None)  # builds it only if the suite's build (`make image`) is stale
    program, *arguments = probe_command(lookup(DEFAULT_CATALOG, "everything") or DEFAULT_CATALOG[0], builder.tag)
    # This test's own label beside the probe's: another test's probe (test_mcp_tools) may run meanwhile.
    mine = f"ariel.test={uuid.uuid4().hex}"
    arguments[arguments.index(builder.tag):0] = ["--label", mine]
    async with (
        stdio_client(StdioServerParameters(command=program, args=arguments)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = {tool.name for tool in (await session.list_tools()).tools}
        echoed = await session.call_tool("echo", {"message": "hello from the image"})
        added = await session.call_tool("add", {"a": 2, "b": 40})
    assert {"echo", "add"} <= tools
    assert echoed.content == [TextContent(type="text", text="Echo: hello from the image")]
    assert isinstance(added.content[0], TextContent) and "42" in added.content[0].text
    # Ending the session ends the container, and --rm removes it.
    client = docker.from_env()
    try:
        deadline = time.monotonic() + 15
        while (client.containers.list(all=True, filters={"label": [PROBE_LABEL, mine]}, ignore_removed=True)
               and time.monotonic() < deadline):
            time.sleep(0.2)
        assert client.containers.list(all=True, filters={"label": [PROBE_LABEL, mine]},
                                      ignore_removed=True) == []
    finally:
        client.close()
