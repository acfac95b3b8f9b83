"""The compose install's images are rebuilt exactly when what goes into each changed, and only from a checkout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deployments.exceptions import ImageBuildFailed
from deployments.images.compose_images import ComposeImages
from deployments.images.runtime_image import SOURCE_ROOT, RuntimeImageBuilder


def checkout(tmp_path: Path) -> Path:
    for part in ("docker", "flows", "blocks", "deployments", "mcp_server"):
        shutil.copytree(SOURCE_ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("constraints.txt", "pyproject.toml"):
        shutil.copy2(SOURCE_ROOT / name, tmp_path / name)
    return tmp_path


def hashes(images: ComposeImages) -> tuple[str, str]:
    return images._app_hash("sha256:base"), images._postgres_hash("sha256:base")


def test_a_change_of_the_control_plane_rebuilds_the_app_image_and_not_postgresql(tmp_path: Path) -> None:
    images = ComposeImages(base_image="b", root=checkout(tmp_path))
    app, postgres = hashes(images)
    (tmp_path / "README.md").write_text("not part of either image")
    assert hashes(images) == (app, postgres)
    settings = tmp_path / "mcp_server" / "settings.py"
    settings.write_text(settings.read_text() + "\n# changed\n")
    changed_app, same_postgres = hashes(images)
    assert changed_app != app and same_postgres == postgres


def test_a_change_of_the_postgresql_entrypoint_rebuilds_its_image(tmp_path: Path) -> None:
    images = ComposeImages(base_image="b", root=checkout(tmp_path))
    app, postgres = hashes(images)
    entrypoint = tmp_path / "docker" / "postgres" / "docker-entrypoint.sh"
    entrypoint.write_text(entrypoint.read_text() + "\n# changed\n")
    same_app, changed_postgres = hashes(images)
    assert same_app == app and changed_postgres != postgres
    assert images._app_hash("sha256:other") != app


def test_images_are_built_only_from_a_checkout_and_say_so(tmp_path: Path) -> None:
    # Installed from a wheel (the app image), there is no docker/ folder to build from.
    installed = tmp_path / "site-packages"
    installed.mkdir()
    with pytest.raises(ImageBuildFailed, match="can only be built from a checkout of Ariel's source"):
        RuntimeImageBuilder(tag="ariel-runtime:t", base_image="b", root=installed).ensure(progress=print)
    with pytest.raises(ImageBuildFailed, match="set ARIEL_BUILD_IMAGE=false"):
        ComposeImages(base_image="b", root=installed).ensure_all(progress=print)
