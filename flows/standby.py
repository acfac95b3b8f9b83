"""A run container started before its run: everything imported, waiting on stdin for the one run it will execute.

Started by the worker host (`deployments.pools.standby`) as `python -m flows.standby`, with the pool's
image, limits and labels but none of a run's environment. It imports what a run needs (Ariel's run engine, the
agent's code, litellm where the run calls its model itself) while no run waits, then blocks reading one line from
stdin: the run's environment as JSON (`{"env": {...}}`: the run id, the Prefect API and the run's own token, which
so never appears in `docker inspect`). It applies it, and runs `flows.engine` in this interpreter as
`python -m flows.engine` would, then exits at once: one run per container, as with the stock worker.

A closed stdin before any line (the worker host retiring it), or no line within `ORPHAN_SECONDS` (a worker
host killed before it could remove this standby), ends the process quietly.
"""

from __future__ import annotations

import gc
import json
import os
import select
import sys
import threading
from typing import TYPE_CHECKING, Any
from uuid import UUID

from flows.engine.api import RUN_ID_ENV
from flows.exceptions import UNFIT_EXIT_CODE, UnfitContainer

if TYPE_CHECKING:
    from flows.engine.api import ApiSettings

ORPHAN_SECONDS = 900.0
"""Past this, a standby with no run exits: its worker host retires standbys after 10 idle minutes itself, so one
still waiting was left by a worker host that was killed, perhaps after naming it for a run it never handed over
(a restarted worker host removes only the standbys not named for a run)."""
READY_LINE = "ariel standby: imported, waiting for a run"
"""Printed once the imports are done: `docker logs` shows whether a standby is ready (benchmarks wait for it)."""


def warm(stdin: Any) -> bool:
    """Import what every run imports, so that a run handed over starts with its first line. Returns whether a
    run was already waiting on `stdin` once the run's code was imported.

    litellm only where runs call their model themselves (`MODELS_HERE_ENV`: own hardware); on Ariel's pools the
    gateway calls it. With a run waiting (the cold path: the worker started this container for it, or handed
    this standby a run in its first second), litellm, two thirds of those imports, is left to
    `import_litellm_beside`, and its first call to the run.
    """
    # The imports make over a million objects that live as long as the process: the collector's passes over
    # them meanwhile are a fifth of their CPU. Frozen after, they stay out of every collection the run makes.
    gc.disable()
    try:
        import flows.agent  # noqa: F401  (it imports litellm only when a run starts)
        import flows.engine.lifecycle  # noqa: F401

        if run_waiting(stdin):
            return True
        # Not the MCP client (~0.3 CPU-s): every run would pay it, and only runs with MCP servers use it.
        if models_here():
            import litellm

            from flows.models import SCRIPTED_MODEL
            from flows.models.scripted import register_scripted_provider

            # litellm sets itself up on its first call, ~0.6 s: make that call here, to the offline scripted model
            # (no network, nothing of any run), so that a run's first model step does not pay it. The sync call,
            # so that no event loop of litellm's outlives it into the run's.
            register_scripted_provider()
            litellm.completion(model=SCRIPTED_MODEL, messages=[{"role": "user", "content": "warm up"}],
                               script=[{"reply": "ready"}], num_retries=0)
        gc.collect()  # what the imports (and the call) left, before the rest is frozen for good
        return False
    finally:
        gc.freeze()
        gc.enable()


def models_here() -> bool:
    """Whether this container's run calls its model itself (own hardware), rather than through the gateway."""
    from flows.models import MODELS_HERE_ENV

    return os.environ.get(MODELS_HERE_ENV) == "1"


def import_litellm_beside() -> threading.Thread:
    """Import litellm in a thread while the run starts (the cold path): the engine's first calls wait on
    Prefect's API. Started once the run's environment is applied, so litellm reads it as a run's
    would; the run's own `import litellm` waits for this one to finish."""
    def load() -> None:
        import litellm  # noqa: F401

    thread = threading.Thread(target=load, name="import-litellm", daemon=True)
    thread.start()
    return thread


def run_waiting(stream: Any) -> bool:
    """Whether the run's line is already on `stream`: the container was started for its run (the cold path)."""
    return bool(select.select([stream], [], [], 0)[0])


def read_handoff(stream: Any, wait_seconds: float = ORPHAN_SECONDS) -> dict[str, str] | None:
    """The run's environment from the one line the worker host writes; None when stdin closed first, or no run
    came within `wait_seconds` (a worker host that was killed left this standby: nobody else would remove it).
    """
    ready, _, _ = select.select([stream], [], [], wait_seconds)
    if not ready:
        return None
    line = stream.readline()
    if not line.strip():
        return None
    try:
        handed = json.loads(line)
    except ValueError:
        handed = None
    env = handed.get("env") if isinstance(handed, dict) else None
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SystemExit("standby: the handoff line has no {'env': {name: value}} object")
    return env


def apply(env: dict[str, str]) -> ApiSettings:
    """Make `env` this process's environment; the run's Prefect API as it names it (`UnfitContainer` when the
    container lacks what it names)."""
    os.environ.update(env)
    from flows.engine.api import ApiSettings

    return ApiSettings.from_environment()


def main() -> None:
    cold = warm(sys.stdin)
    if not cold:
        print(READY_LINE, flush=True)
    env = read_handoff(sys.stdin)
    if env is None:
        return
    try:
        settings = apply(env)
        run_id = UUID(os.environ.get(RUN_ID_ENV, ""))
    except (UnfitContainer, ValueError) as exc:
        # Before the run starts: it is still Pending, and its worker records the exit. This code, not 1, so that
        # recovery does not retry it: another attempt in this image with these settings stops the same way.
        print(f"standby: the run cannot start in this container: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(UNFIT_EXIT_CODE) from None
    # The run's pool may export telemetry: the provider must be set before the engine starts the run's span.
    from flows.telemetry import start_run_telemetry

    start_run_telemetry()
    if cold and models_here():
        import_litellm_beside()
    from flows.engine.lifecycle import run_and_exit

    run_and_exit(settings, run_id)


if __name__ == "__main__":
    main()
