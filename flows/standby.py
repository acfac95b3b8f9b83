"""A run container started before its run: everything imported, waiting on stdin for the one run it will execute.

Started by the worker host (`deployments.pools.standby`) as `python -m flows.standby`, with the pool's
image, limits and labels but none of a run's environment. It imports what a run needs (Prefect's engine,
litellm, the agent flow) while no run waits, then blocks reading one line from stdin: the run's
environment as JSON (`{"env": {...}}`: the run id, the Prefect API and the run's own token, which so
never appears in `docker inspect`). It applies it, and runs Prefect's engine in this interpreter as
`python -m prefect.engine` would, then exits at once: one run per container, as with the stock worker.

Prefect's `flow-run execute`, which the stock worker starts, is a supervisor that turns a run set to
Cancelling into Cancelled; without it this module does that job, the same way: it watches its own run
and, on Cancelling, delivers the cancel intent through Prefect's attempt control channel
(`prefect.runner._control_channel`) and then SIGTERMs itself, so that the engine ends the run
Cancelled (with its hooks) rather than Crashed.

A closed stdin before any line (the worker host retiring it), or no line within `ORPHAN_SECONDS` (a worker
host killed before it could remove this standby), ends the process quietly.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import runpy
import select
import signal
import sys
import threading
import traceback
from typing import Any
from uuid import UUID

from flows.exceptions import UNFIT_EXIT_CODE, UnfitContainer

# How often the run reads its own state to learn that it was cancelled: one small GET through the gateway.
CANCEL_POLL_SECONDS = 1.0
ORPHAN_SECONDS = 900.0
"""Past this, a standby with no run exits: its worker host retires standbys after 10 idle minutes itself, so one
still waiting was left by a worker host that was killed, perhaps after naming it for a run it never handed over
(a restarted worker host removes only the standbys not named for a run)."""
READY_LINE = "ariel standby: imported, waiting for a run"
"""Printed once the imports are done: `docker logs` shows whether a standby is ready (benchmarks wait for it)."""


def warm(stdin: Any) -> bool:
    """Import what every run imports, so that a run handed over starts with its first line. Returns whether a
    run was already waiting on `stdin` once Prefect was imported.

    litellm only where runs call their model themselves (`MODELS_HERE_ENV`: own hardware); on Ariel's pools the
    gateway calls it. With a run waiting (the cold path: the worker started this container for it, or handed
    this standby a run in its first second), litellm, two thirds of those imports, is left to
    `import_litellm_beside`, and its first call to the run.
    """
    # The imports make over a million objects that live as long as the process: the collector's passes over
    # them meanwhile are a fifth of their CPU. Frozen after, they stay out of every collection the run makes.
    gc.disable()
    try:
        import prefect.engine  # noqa: F401
        import prefect.flow_engine  # noqa: F401
        import prefect.runner._control_channel  # noqa: F401

        import flows.agent  # noqa: F401  (it imports litellm only when a run starts)

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
    """Import litellm in a thread while the run starts (the cold path): the engine spends its first second
    waiting on Prefect's API. Started once the run's environment is applied, so litellm reads it as a run's
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


def apply(env: dict[str, str]) -> None:
    """Make `env` this process's environment, and Prefect's settings follow it (they were read at import)."""
    os.environ.update(env)
    from prefect.context import refresh_global_settings_context

    from flows.tls import spare_prefect_the_ca_bundle

    spare_prefect_the_ca_bundle()

    refresh_global_settings_context()


def watch_cancellation(run_id: UUID) -> None:
    """In a daemon thread: when the run turns Cancelling, end it Cancelled the way Prefect's runner would."""
    ready = threading.Event()
    ports: list[tuple[int, str]] = []

    async def watch() -> None:
        from prefect.client.orchestration import get_client
        from prefect.runner._control_channel import ControlChannel, ControlSignalStatus
        from prefect.states import Cancelled

        # Prefect's private runner-side channel (pinned in constraints.txt): the engine's own protocol for
        # "this SIGTERM is a cancel", so that its cancellation hooks run and the state is not Crashed.
        # Open for the life of the process, which ends with its run.
        channel: ControlChannel | None = ControlChannel()
        try:
            assert channel is not None
            await channel.__aenter__()
            ports.append(channel.register(run_id))
        except Exception as exc:  # without it a cancel still ends the run Cancelled, only without its hooks
            print(f"standby: no control channel ({type(exc).__name__})", file=sys.stderr)
            channel = None
        finally:
            ready.set()  # registered or not: the run must not wait on this
        async with get_client() as client:
            while True:
                await asyncio.sleep(CANCEL_POLL_SECONDS)
                try:
                    run = await client.read_flow_run(run_id)
                    if run.state is None or not run.state.is_cancelling():
                        continue
                    status = await channel.signal(run_id, "cancel") if channel else None
                    if status is ControlSignalStatus.ACKNOWLEDGED:
                        os.kill(os.getpid(), signal.SIGTERM)
                        return
                    if status is ControlSignalStatus.ALREADY_CONCLUDED:  # the engine ended it first
                        return
                    # The engine is not listening yet (still loading the flow), or no channel: end the run here.
                    await client.set_flow_run_state(run_id, Cancelled(message="Flow run was cancelled."), force=True)
                except Exception as exc:  # an API blip: the next poll asks again
                    print(f"standby: cancellation check failed ({type(exc).__name__}); retrying", file=sys.stderr)
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)

    thread = threading.Thread(target=asyncio.run, args=(watch(),), name="cancel-watch", daemon=True)
    thread.start()
    if ready.wait(10) and ports:
        port, token = ports[0]
        os.environ["PREFECT__CONTROL_PORT"], os.environ["PREFECT__CONTROL_TOKEN"] = str(port), token


def main() -> None:
    cold = warm(sys.stdin)
    if not cold:
        print(READY_LINE, flush=True)
    env = read_handoff(sys.stdin)
    if env is None:
        return
    try:
        apply(env)
    except UnfitContainer as exc:
        # Before the engine: the run is still Pending, and its worker records the exit. This code, not 1, so that
        # recovery does not retry it: another attempt in this image with these settings stops the same way.
        print(f"standby: the run cannot start in this container: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(UNFIT_EXIT_CODE) from None
    # The run's pool may export telemetry: the provider must be set before the engine starts the run's span.
    from flows.telemetry import start_run_telemetry

    start_run_telemetry()
    if cold and models_here():
        import_litellm_beside()
    run_id = UUID(os.environ["PREFECT__FLOW_RUN_ID"])
    watch_cancellation(run_id)
    # Exactly what `python -m prefect.engine` runs, in this interpreter with its imports already done.
    # run_path, not run_module: the module is imported already, and running it again by name warns so.
    import prefect.engine

    sys.argv = [prefect.engine.__file__]
    code = 0
    try:
        runpy.run_path(prefect.engine.__file__, run_name="__main__")
    except SystemExit as exc:
        code = exit_status(exc)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        # What interpreter exit does, less its teardown of every module and object: freeing Prefect's and
        # litellm's heap kept the container up ~1.7 s after its run had ended. Threads are joined and the
        # exit functions run as at any exit: Prefect drains its event queue in the first (task runs' states
        # reach Prefect as events) and its log queue in the second.
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def exit_status(exc: SystemExit) -> int:
    """The status `python` exits with for `exc`, printing a message one carries, as it does.

    >>> exit_status(SystemExit()), exit_status(SystemExit(3))
    (0, 3)
    """
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    main()
