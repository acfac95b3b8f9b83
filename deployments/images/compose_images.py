"""Build the images of a compose install (`docker/compose.yaml`) beside the runtime image, offline.

- The app image (`docker/app.Dockerfile`): Ariel's control plane installed from its wheel, one image with
  several entrypoints: `ariel serve`, `ariel pool-host`, and `prefect server start` (the Prefect release Ariel
  pins, with the pins it needs). Its wheels are resolved like the runtime's, by the base image's own Python.
- The PostgreSQL image (`docker/postgres/`): Debian's PostgreSQL on the same base, taking the official
  `postgres` image's settings (`POSTGRES_PASSWORD`, `PGDATA`, `/docker-entrypoint-initdb.d`), so the compose
  file runs on either.

Each image is labelled with a hash of what goes into it and rebuilt only when that changes, as the
runtime image is (`runtime_image.py`). Needs a checkout of the source and a Docker engine, so no doctest::

    ComposeImages(base_image="ariel-base:bookworm").ensure_all(progress=print)
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.errors import ImageNotFound

from deployments.exceptions import ImageBuildFailed
from deployments.images.runtime_image import (
    CODE_HASH_LABEL,
    SOURCE_ROOT,
    Progress,
    _docker,
    _link_or_copy,
    _remove_replaced,
    base_image_id,
    build_context,
    download_wheels,
    need_source_tree,
)

APP_IMAGE = "ariel-app:local"
POSTGRES_IMAGE = "ariel-postgres:15"
_APP_PACKAGES = ("flows", "blocks", "deployments", "mcp_server")


def _files(root: Path, names: Iterable[str]) -> Iterable[Path]:
    for name in names:
        path = root / name
        if path.is_file():
            yield path
        else:  # every file, not only Python: migrations' templates, package data
            yield from sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _hash(base_id: str, root: Path, files: Iterable[Path]) -> str:
    digest = hashlib.sha256(base_id.encode())
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass
class ComposeImages:
    """Builds the app image and the PostgreSQL image on `base_image` when missing or older than the code.

    Args:
        base_image: a Debian bookworm image with python3 and venv (docker/build-base-image.sh makes one).
        app_tag, postgres_tag: the images' names (the compose file's ARIEL_APP_IMAGE, ARIEL_POSTGRES_IMAGE).
        wheel_cache: resolved wheel sets, shared with the runtime image's builder.
        ca_bundle: the host's CA bundle, mounted only while resolving wheels; never baked in.
    """

    base_image: str
    app_tag: str = APP_IMAGE
    postgres_tag: str = POSTGRES_IMAGE
    wheel_cache: Path = field(default_factory=lambda: Path.home() / ".cache" / "ariel" / "wheels")
    ca_bundle: Path | None = None
    root: Path = SOURCE_ROOT

    def ensure_all(self, progress: Progress = print) -> list[str]:
        """Build what is missing or stale; returns the tags it built."""
        need_source_tree(self.root, self.app_tag)
        client = _docker()
        try:
            base_id = base_image_id(client, self.base_image)
            built = []
            if self._ensure(client, self.postgres_tag, self._postgres_hash(base_id), self._build_postgres, progress):
                built.append(self.postgres_tag)
            if self._ensure(client, self.app_tag, self._app_hash(base_id), self._build_app, progress):
                built.append(self.app_tag)
            return built
        finally:
            client.close()

    def _postgres_hash(self, base_id: str) -> str:
        return _hash(base_id, self.root, _files(self.root, ["docker/postgres"]))

    def _app_hash(self, base_id: str) -> str:
        names = ["docker/app.Dockerfile", "pyproject.toml", "constraints.txt", *_APP_PACKAGES]
        return _hash(base_id, self.root, _files(self.root, names))

    def _ensure(
        self,
        client: docker.DockerClient,
        tag: str,
        wanted: str,
        build: Callable[[docker.DockerClient, str, Progress], None],
        progress: Progress,
    ) -> bool:
        try:
            replaced = client.images.get(tag)
            current = replaced.labels.get(CODE_HASH_LABEL)
        except ImageNotFound:
            replaced, current = None, None
        if current == wanted:
            progress(f"{tag} is up to date")
            return False
        progress(f"{tag} is {'missing' if current is None else 'older than the code'}; building it ...")
        started = time.monotonic()
        build(client, wanted, progress)
        if replaced is not None and replaced.id != client.images.get(tag).id:
            _remove_replaced(client, str(replaced.id))
        progress(f"built {tag} in {time.monotonic() - started:.0f} s")
        return True

    def _build_postgres(self, client: docker.DockerClient, code_hash: str, progress: Progress) -> None:
        # apt fetches Debian's PostgreSQL over the host's network (containers here have no other).
        build_context(client, self.root / "docker" / "postgres", self.postgres_tag, {"BASE_IMAGE": self.base_image},
                      code_hash, progress, network_mode="host")

    def _build_app(self, client: docker.DockerClient, code_hash: str, progress: Progress) -> None:
        with tempfile.TemporaryDirectory(prefix="ariel-app-build-") as tmp:
            context = Path(tmp)
            (context / "ariel").mkdir()
            progress("building Ariel's wheel ...")
            # From a copy: setuptools leaves build/ and *.egg-info behind in the folder it builds.
            source = context / "source"
            for name in ("pyproject.toml", "README.md"):
                _link_or_copy(self.root / name, source / name)
            for package in _APP_PACKAGES:
                shutil.copytree(self.root / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
            made = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(context / "ariel"),
                 str(source)], capture_output=True, text=True, check=False,
            )
            shutil.rmtree(source)  # not sent to the engine with the context
            if made.returncode != 0:
                raise ImageBuildFailed(f"building Ariel's wheel failed:\n{made.stderr.strip()[-2000:]}")
            wheels = self._dependency_wheels(client, context / "ariel", progress)
            _link_or_copy(wheels, context / "wheels")
            shutil.copy2(self.root / "docker" / "app.Dockerfile", context / "Dockerfile")
            build_context(client, context, self.app_tag, {"BASE_IMAGE": self.base_image}, code_hash, progress)

    def _dependency_wheels(self, client: docker.DockerClient, ariel: Path, progress: Progress) -> Path:
        """Ariel's dependencies' wheels for the base's Python, cached by what decides them (not by the code)."""
        base_id = base_image_id(client, self.base_image)
        pyproject, constraints = self.root / "pyproject.toml", self.root / "constraints.txt"
        key = hashlib.sha256(base_id.encode() + pyproject.read_bytes() + constraints.read_bytes()).hexdigest()[:16]
        folder = self.wheel_cache / f"app-{key}"
        if (folder / ".complete").exists():
            progress(f"using resolved wheels in {folder}")
            return folder
        progress("resolving the app's wheels with the base image's Python (a few minutes the first time) ...")
        wheel = next(ariel.glob("ariel-*.whl"))
        requirements = ariel / "requirements.txt"
        requirements.write_text(f"/requirements/{wheel.name}\n")
        download_wheels(client, base_id, requirements, folder, progress, self.ca_bundle, constraints)
        for own in folder.glob("ariel-*.whl"):  # this build's code comes from its own wheel, not the cache
            own.unlink()
        requirements.unlink()
        return folder
