"""Build the runtime images that flow-run containers run, only when missing or stale: the full one and its lean
twin (`deployments.pools.run_images`), two targets of one Dockerfile.

The image is labelled with a hash of everything that goes into it (Dockerfile,
runtime requirements, `flows/`, `blocks/`, the base image id, the stdio
catalog); a label that differs from the current hash means the code changed
and the image is rebuilt.

Wheels are resolved by the base image's own interpreter in a throwaway
container with host networking, then the build installs from that folder with
no network: the host's Python can pick wheels the image's Python would not.
The stdio catalog's servers (`stdio_catalog.py`) are prepared the same way
before the build: npm packages installed by the host's npm, a Node.js binary
from the npm registry, a PyPI entry's wheels resolved like the runtime's.

Example (it builds an image with a Docker engine and the package index, so this is no doctest)::

    builder = RuntimeImageBuilder(tag="ariel-runtime:local", base_image="ariel-base:bookworm",
                                  catalog=DEFAULT_CATALOG)
    builder.ensure(progress=print)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.errors import APIError, DockerException, ImageNotFound

from deployments.exceptions import ImageBuildFailed
from deployments.images.mcp_packages import node_binary, npm_install
from deployments.images.stdio_catalog import DEFAULT_CATALOG, StdioServer, catalog_digest
from deployments.pools.run_images import lean_image_of

SOURCE_ROOT = Path(__file__).resolve().parents[2]
CODE_HASH_LABEL = "ariel.code-hash"
_CONTEXT_DIRS = ("flows", "blocks")
_DOCKER_FILES = ("Dockerfile", "install-venv.sh", "requirements-lean.txt", "requirements-runtime.txt")

Progress = Callable[[str], None]


def _source_files(root: Path) -> Iterable[Path]:
    for name in _DOCKER_FILES:
        yield root / "docker" / name
    yield root / "constraints.txt"
    for directory in _CONTEXT_DIRS:
        # Every file the build copies, not only Python: any change must rebuild.
        yield from sorted(
            path for path in (root / directory).rglob("*") if path.is_file() and "__pycache__" not in path.parts
        )


def _remove_replaced(client: docker.DockerClient, image_id: str) -> None:
    """Remove the image a build took the tag from, if nothing names it any more: a few MB after a code change,
    the whole image's 245 or 611 MB after a change of wheels, base or catalog.
    The engine refuses while a container (a run, a standby) still uses it; it then stays, as any other."""
    with suppress(DockerException):
        replaced = client.images.get(image_id)
        if not replaced.tags:  # another name for it (a tag of its own, the same build under two tags) keeps it
            client.images.remove(image_id)


@dataclass
class RuntimeImageBuilder:
    """Builds `tag` from `docker/Dockerfile` on `base_image`.

    Args:
        tag: the runtime image's name and tag.
        base_image: a Debian-based image with python3 and venv.
        wheel_cache: folder of resolved wheel sets, one per requirements+base.
        ca_bundle: the host's CA bundle, mounted read-only while resolving wheels
            so the throwaway container trusts what the host trusts; never baked in.
        catalog: the stdio MCP servers to install (settings.stdio_catalog).
        mcp_cache: folder of prepared catalog parts (Node.js, npm packages, PyPI wheels).
    """

    tag: str
    base_image: str
    wheel_cache: Path = field(default_factory=lambda: Path.home() / ".cache" / "ariel" / "wheels")
    ca_bundle: Path | None = None
    root: Path = SOURCE_ROOT
    catalog: Sequence[StdioServer] = DEFAULT_CATALOG
    mcp_cache: Path = field(default_factory=lambda: Path.home() / ".cache" / "ariel" / "mcp")

    def code_hash(self, base_image_id: str) -> str:
        digest = hashlib.sha256(base_image_id.encode())
        digest.update(b"catalog\0" + catalog_digest(self.catalog).encode() + b"\0")
        for path in _source_files(self.root):
            digest.update(str(path.relative_to(self.root)).encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()[:16]

    def ensure(self, progress: Progress = print) -> bool:
        """Build the image if it is missing or older than the code. Returns whether it built."""
        client = _docker()
        try:
            return self._ensure(client, progress)
        finally:
            client.close()

    @property
    def tags(self) -> dict[str, str]:
        """The images this builder makes, by their Dockerfile target: the full image, and its lean twin."""
        lean = lean_image_of(self.tag)
        return {"full": self.tag, **({"lean": lean} if lean else {})}

    def _ensure(self, client: docker.DockerClient, progress: Progress) -> bool:
        need_source_tree(self.root, self.tag)
        base_id = base_image_id(client, self.base_image)
        wanted = self.code_hash(base_id)
        stale: dict[str, str | None] = {}  # target → the id of the image its tag names now
        for target, tag in self.tags.items():
            try:
                replaced = client.images.get(tag)
                if replaced.labels.get(CODE_HASH_LABEL) != wanted:
                    stale[target] = replaced.id
                    progress(f"runtime image {tag} is older than the code; building it on {self.base_image} ...")
            except ImageNotFound:
                stale[target] = None
                progress(f"runtime image {tag} is missing; building it on {self.base_image} ...")
        if not stale:
            return False
        started = time.monotonic()
        wheels = self._resolve_wheels(client, base_id, progress)
        mcp = self._prepare_catalog(client, base_id, progress) if "full" in stale else {}
        # The lean target first: the full one's build then finds the stages they share already built.
        for target in sorted(stale, key=lambda name: name != "lean"):
            tag = self.tags[target]
            self._build(client, wheels, mcp, wanted, progress, target, tag)
            replaced_id = stale[target]
            if replaced_id is not None and replaced_id != client.images.get(tag).id:
                _remove_replaced(client, replaced_id)
            progress(f"built {tag} ({client.images.get(tag).attrs.get('Size', 0) / 1e6:.0f} MB)")
        progress(f"built in {time.monotonic() - started:.0f} s")
        return True

    def _resolve_wheels(self, client: docker.DockerClient, base_id: str, progress: Progress) -> Path:
        requirements = self.root / "docker" / "requirements-runtime.txt"
        constraints = self.root / "constraints.txt"
        lean = self.root / "docker" / "requirements-lean.txt"
        key = hashlib.sha256(base_id.encode() + requirements.read_bytes() + lean.read_bytes()
                             + constraints.read_bytes()).hexdigest()[:16]
        folder = self.wheel_cache / key
        if (folder / ".complete").exists():
            progress(f"using resolved wheels in {folder}")
            return folder
        progress("resolving runtime wheels with the base image's Python (a few minutes the first time) ...")
        # The versions the tests passed with, so the image runs what was tested.
        download_wheels(client, base_id, requirements, folder, progress, self.ca_bundle, constraints)
        return folder

    def _prepare_catalog(self, client: docker.DockerClient, base_id: str, progress: Progress) -> dict[str, Path]:
        """The catalog's parts for the build context, by their folder there: node, npm, wheels/<name>.

        Each part is cached under `mcp_cache` by what it is made of, so a rebuild for a code change
        reaches no registry.
        """
        parts: dict[str, Path] = {}
        npm_specs = sorted(entry.npm for entry in self.catalog if entry.npm)
        if npm_specs:
            arch = str(client.info().get("Architecture", "x86_64"))
            parts["node/bin/node"] = node_binary(arch, self.mcp_cache, progress)
            key = hashlib.sha256("\n".join(npm_specs).encode()).hexdigest()[:16]
            folder = self.mcp_cache / f"npm-{key}"
            if (folder / ".complete").exists():
                progress(f"using installed npm packages in {folder}")
            else:
                progress(f"installing the stdio catalog's npm packages into {folder} ...")
                shutil.rmtree(folder, ignore_errors=True)
                npm_install(npm_specs, folder, progress)
                (folder / ".complete").touch()
            parts["npm"] = folder
        for entry in self.catalog:
            if entry.pypi is None:
                continue
            key = hashlib.sha256(f"{base_id}\n{entry.pypi}".encode()).hexdigest()[:16]
            folder = self.mcp_cache / f"wheels-{key}"
            if (folder / ".complete").exists():
                progress(f"using resolved wheels of {entry.pypi} in {folder}")
            else:
                progress(f"resolving wheels of {entry.pypi} with the base image's Python ...")
                requirements = self.mcp_cache / f"requirements-{key}.txt"
                requirements.write_text(entry.pypi + "\n")
                download_wheels(client, base_id, requirements, folder, progress, self.ca_bundle)
                shutil.copy2(requirements, folder / "requirements.txt")
            parts[f"wheels/{entry.name}"] = folder
        return parts

    def _build(
        self, client: docker.DockerClient, wheels: Path, mcp: dict[str, Path], code_hash: str, progress: Progress,
        target: str, tag: str,
    ) -> None:
        with tempfile.TemporaryDirectory(prefix="ariel-build-") as tmp:
            context = Path(tmp)
            for name in _DOCKER_FILES:
                shutil.copy2(self.root / "docker" / name, context / name)
            shutil.copytree(wheels, context / "wheels", ignore=shutil.ignore_patterns(".complete"))
            # Always there, so the Dockerfile's COPY mcp/ works with an empty catalog.
            (context / "mcp").mkdir()
            (context / "mcp" / ".catalog.json").write_text(
                json.dumps([entry.model_dump() for entry in self.catalog], indent=2) + "\n"
            )
            for part, source in mcp.items():
                _link_or_copy(source, context / "mcp" / part)
            for entry in self.catalog:
                if f"wheels/{entry.name}" in mcp:  # the one program the Dockerfile links onto PATH
                    (context / "mcp" / "wheels" / entry.name / "program").write_text(entry.command[0])
            for directory in _CONTEXT_DIRS:
                shutil.copytree(
                    self.root / directory, context / directory, ignore=shutil.ignore_patterns("__pycache__")
                )
            build_context(client, context, tag, {"BASE_IMAGE": self.base_image}, code_hash, progress, target=target)


def base_image_id(client: docker.DockerClient, base_image: str) -> str:
    """The id of the base image every Ariel image builds on; refused, with what to do, when the engine lacks it."""
    try:
        base_id = client.images.get(base_image).id
    except ImageNotFound:
        raise ImageBuildFailed(
            f"base image {base_image!r} is not present; build it with docker/build-base-image.sh "
            "or set ARIEL_RUNTIME_BASE_IMAGE to an image you have"
        ) from None
    assert base_id is not None  # an image the engine returns always carries its Id
    return base_id


def need_source_tree(root: Path, tag: str) -> None:
    """Refuse where Ariel is installed from a wheel (as in the app image): images build from a checkout."""
    if not (root / "docker" / "Dockerfile").is_file():
        raise ImageBuildFailed(
            f"{tag} can only be built from a checkout of Ariel's source (no docker/Dockerfile under {root}); build it "
            "there with `ariel build-image`, or set ARIEL_BUILD_IMAGE=false here to use the image the engine has"
        )


def download_wheels(
    client: docker.DockerClient,
    base_id: str,
    requirements: Path,
    folder: Path,
    progress: Progress,
    ca_bundle: Path | None = None,
    constraints: Path | None = None,
) -> None:
    """`pip download` `requirements` into `folder` with the base image's interpreter (see the module doc).

    `requirements`' folder is mounted beside it, so a line may name a wheel there (`/requirements/x.whl`).
    """
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    volumes = {
        str(folder): {"bind": "/wheels", "mode": "rw"},
        str(requirements.parent): {"bind": "/requirements", "mode": "ro"},
    }
    script = (
        "python3 -m venv /tmp/venv && /tmp/venv/bin/pip download --quiet --progress-bar off "
        f"--dest /wheels -r /requirements/{requirements.name}"
    )
    if constraints is not None:
        volumes[str(constraints)] = {"bind": "/constraints.txt", "mode": "ro"}
        script += " -c /constraints.txt"
    ca_bundle = ca_bundle or _host_ca_bundle()
    if ca_bundle is not None:
        volumes[str(ca_bundle)] = {"bind": "/etc/ssl/certs/ca-certificates.crt", "mode": "ro"}
    container = client.containers.run(
        base_id,
        ["sh", "-c", script],
        detach=True,
        network_mode="host",
        volumes=volumes,
        user=f"{os.getuid()}:{os.getgid()}",
        environment={"HOME": "/tmp", "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt"},
        labels={"ariel.role": "wheel-resolver"},
    )
    try:
        for line in container.logs(stream=True, follow=True):
            progress("  " + line.decode(errors="replace").rstrip())
        status = container.wait()
    finally:
        container.remove(force=True)
    if status.get("StatusCode") != 0:
        raise ImageBuildFailed(
            f"resolving wheels of {requirements.name} failed (see the pip output above); check that the "
            "package index is reachable from a container with host networking"
        )
    (folder / ".complete").touch()


def build_context(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    buildargs: dict[str, str],
    code_hash: str,
    progress: Progress,
    dockerfile: str = "Dockerfile",
    network_mode: str | None = None,
    target: str | None = None,
) -> None:
    """Build `context` as `tag`, labelled with `code_hash`, saying each step; a failure names its last lines."""
    progress(f"building {tag} ...")
    recent: list[str] = []
    try:
        for chunk in client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=buildargs,
            labels={CODE_HASH_LABEL: code_hash},
            network_mode=network_mode,
            target=target,
            rm=True,
            forcerm=True,
            decode=True,
        ):
            if "error" in chunk:
                tail = "\n".join(recent[-20:])
                raise ImageBuildFailed(f"building {tag} failed: {chunk['error'].strip()}\n{tail}")
            text = chunk.get("stream", "").rstrip()
            if text.startswith("Step "):
                progress("  " + text)
            elif text:
                recent.append(text)
    except APIError as exc:
        raise ImageBuildFailed(f"building {tag} failed: {exc.explanation}") from exc



def _link_or_copy(source: Path, target: Path) -> None:
    """Put `source` (a file or folder) at `target`: hard links where the file system allows, else copies."""

    def link(src: str, dst: str) -> object:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        return dst

    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        # symlinks=True keeps node_modules/.bin's links relative to their packages.
        shutil.copytree(source, target, symlinks=True, copy_function=link, ignore=shutil.ignore_patterns(".complete"))
    else:
        link(str(source), str(target))


def docker_available() -> bool:
    """Whether a Docker engine answers."""
    try:
        _docker().close()
    except ImageBuildFailed:
        return False
    return True


def lean_twin_problem(client: docker.DockerClient, image: str) -> str | None:
    """Why the engine of `client` cannot run the lean twin of the full runtime image `image` in its place
    (`deployments.pools.run_images`); None when it can: the twin is there, built from the same code."""
    lean = lean_image_of(image)
    if lean is None:
        return f"{image} is named by its digest, which names no lean twin"
    try:
        twin = client.images.get(lean).labels or {}
    except ImageNotFound:
        return f"this Docker engine has no {lean} (`ariel build-image` builds it)"
    try:
        full = client.images.get(image).labels or {}
    except ImageNotFound:
        return f"this Docker engine has no {image} yet"
    if twin.get(CODE_HASH_LABEL) != full.get(CODE_HASH_LABEL):
        return f"{lean} was built from other code than {image} (`ariel build-image` builds both)"
    return None


def image_present(tag: str, pull: bool = True) -> bool:
    """Whether the Docker engine has an image named `tag`; when it has not and the name says which registry holds
    it (`registry.example.com/ariel-runtime:1.2`), pulled from there first, unless not `pull`. An unqualified name
    (`ariel-runtime:local`) is never looked for on Docker Hub: a build of Ariel's is not there.

    >>> _names_registry("registry.example.com/ariel-runtime:1.2"), _names_registry("127.0.0.1:5000/ariel:x")
    (True, True)
    >>> _names_registry("ariel-runtime:local"), _names_registry("acme/ariel-runtime:1.2")
    (False, False)
    """
    client = _docker()
    try:
        client.images.get(tag)
    except ImageNotFound:
        if not pull or not _names_registry(tag):
            return False
        try:
            client.images.pull(tag)
        except DockerException:  # no registry reachable, no such image there, or a local-only name
            return False
        return True
    finally:
        client.close()
    return True


def _names_registry(reference: str) -> bool:
    first, slash, _rest = reference.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def _docker() -> docker.DockerClient:
    try:
        client = docker.from_env()
    except DockerException as exc:
        raise ImageBuildFailed(f"no Docker engine answers ({exc}); start dockerd or use a process pool") from exc
    try:
        client.ping()
    except DockerException as exc:
        client.close()
        raise ImageBuildFailed(f"no Docker engine answers ({exc}); start dockerd or use a process pool") from exc
    return client


def _host_ca_bundle() -> Path | None:
    # The host's trusted CAs (this machine adds one for its package index proxy).
    candidates = (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None
