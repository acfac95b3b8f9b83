"""The runtime image is rebuilt exactly when what goes into it changed."""

from __future__ import annotations

import shutil
from contextlib import suppress
from pathlib import Path

import docker

from deployments.images.runtime_image import CODE_HASH_LABEL, SOURCE_ROOT, RuntimeImageBuilder
from deployments.pools.run_images import lean_image_of


def copy_sources(tmp_path: Path) -> Path:
    for part in ("docker", "flows", "blocks"):
        shutil.copytree(SOURCE_ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(SOURCE_ROOT / "constraints.txt", tmp_path / "constraints.txt")
    return tmp_path


def test_the_code_hash_changes_with_the_runtime_code_and_nothing_else(tmp_path: Path) -> None:
    builder = RuntimeImageBuilder(tag="t", base_image="b", root=copy_sources(tmp_path))
    before = builder.code_hash("sha256:base")
    (tmp_path / "README.md").write_text("not part of the image")
    assert builder.code_hash("sha256:base") == before
    agent = tmp_path / "flows" / "agent.py"
    agent.write_text(agent.read_text() + "\n# changed\n")
    assert builder.code_hash("sha256:base") != before


def test_the_code_hash_changes_with_the_base_image(tmp_path: Path) -> None:
    builder = RuntimeImageBuilder(tag="t", base_image="b", root=copy_sources(tmp_path))
    assert builder.code_hash("sha256:one") != builder.code_hash("sha256:two")


def test_an_image_built_from_this_code_is_not_built_again(docker_engine: None) -> None:
    builder = RuntimeImageBuilder(tag="ariel-runtime:local", base_image="ariel-base:bookworm")
    builder.ensure(progress=lambda _line: None)  # builds it only if the suite's build is stale
    messages: list[str] = []
    assert builder.ensure(progress=messages.append) is False
    assert messages == []
    client = docker.from_env()
    base_id = client.images.get("ariel-base:bookworm").id
    assert base_id is not None
    for tag in ("ariel-runtime:local", "ariel-runtime-lean:local"):
        assert client.images.get(tag).labels[CODE_HASH_LABEL] == builder.code_hash(base_id)
    client.close()


def test_the_lean_image_holds_the_runtime_and_neither_prefect_litellm_nor_node(docker_engine: None) -> None:
    client = docker.from_env()
    try:
        script = ("import importlib.util as u, shutil, flows.agent, flows.engine.lifecycle, flows.standby, "
                  "flows.mcp.client, flows.telemetry_sdk; print(u.find_spec('prefect'), u.find_spec('litellm'), "
                  "u.find_spec('sqlalchemy'), shutil.which('node'), shutil.which('pip'))")
        lean = client.containers.run("ariel-runtime-lean:local", ["python", "-c", script], remove=True)
        full = client.containers.run("ariel-runtime:local", ["python", "-c", "import litellm, flows.agent"],
                                     remove=True)
    finally:
        client.close()
    assert lean.decode().split() == ["None"] * 5
    assert full == b""


def test_the_full_image_starts_runs_for_a_stock_prefect_worker_too(docker_engine: None) -> None:
    client = docker.from_env()
    try:
        # The command a stock DockerWorker gives a run's container (the benchmarks' baseline runs so).
        helped = client.containers.run("ariel-runtime:local", ["prefect", "flow-run", "execute", "--help"],
                                       remove=True)
    finally:
        client.close()
    assert b"flow-run execute" in helped or b"FLOW_RUN_ID" in helped.upper(), helped[:300]


def test_a_rebuild_removes_the_image_it_replaced_unless_another_name_still_has_it(
    docker_engine: None, tmp_path: Path
) -> None:
    tag, other_name = "ariel-runtime:rebuild-test", "ariel-runtime:rebuild-test-kept"
    builder = RuntimeImageBuilder(tag=tag, base_image="ariel-base:bookworm", root=copy_sources(tmp_path))
    agent = tmp_path / "flows" / "agent.py"
    client = docker.from_env()

    def rebuild(change: str) -> str:
        agent.write_text(agent.read_text() + f"\n# {change}\n")  # code of this test's own: no other tag's image
        assert builder.ensure(progress=lambda _line: None) is True
        return str(client.images.get(tag).id)

    try:
        named_twice = rebuild("first")
        client.images.get(named_twice).tag(other_name)
        replaced = rebuild("second")
        assert named_twice in image_ids(client), "an image another name still has was removed"
        rebuild("third")
        assert replaced not in image_ids(client), "the replaced image was left behind"
    finally:
        for name in (tag, other_name, lean_image_of(tag) or tag):
            with suppress(docker.errors.ImageNotFound):
                client.images.remove(name)
        client.close()


def image_ids(client: docker.DockerClient) -> set[str]:
    return {str(image.id) for image in client.images.list(all=True)}
