"""The benchmarks' baseline: Ariel's agent runtime under Prefect's own engine, as Prefect's defaults would run it.

Ariel's runs execute with its own engine (`flows.engine`), which imports no Prefect. To measure what that saves,
`bench/run_latency.py` runs the same agent code on a stock Prefect Docker worker, whose containers run
`prefect flow-run execute`: this module is that deployment's entrypoint, mounted into the container. It gives
the runtime Prefect's parts for the engine's: each step a Prefect task (with its retries and timeout), the run's
log lines through Prefect's API log handler, its artifacts through Prefect's artifact functions. So both sides do
the same work, and only the engine differs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.logging.handlers import APILogHandler

import flows.agent
import flows.transcript
from flows.config import RunConfig
from flows.engine.logs import FLOW_LOGGER, TASK_LOGGER


async def _prefect_step(name: str, call: Callable[[], Awaitable[Any]], *, task_key: str, retries: int = 0,
                        delays: Sequence[float] = (), retry_if: Callable[[BaseException], bool] | None = None,
                        timeout: float | None = None) -> Any:
    def condition(_task: Any, _run: Any, state: Any) -> bool:
        error = state.data if isinstance(state.data, BaseException) else None
        return retry_if is None or (error is not None and retry_if(error))

    async def attempt() -> Any:
        return await call()

    step = task(name=task_key, task_run_name=name, retries=retries, retry_delay_seconds=list(delays) or 0,
                retry_condition_fn=condition, timeout_seconds=timeout, persist_result=False)(attempt)
    return await step()


async def _prefect_artifact(key: str, kind: Literal["markdown", "table"], data: Any, description: str) -> None:
    if kind == "markdown":
        await acreate_markdown_artifact(key=key, markdown=data, description=description)
    else:
        await acreate_table_artifact(key=key, table=data, description=description)


def _on_prefect() -> None:
    flows.agent.task_run = _prefect_step
    flows.agent.publish_artifact = _prefect_artifact
    flows.transcript.publish_artifact = _prefect_artifact
    handler = APILogHandler()
    for name in (FLOW_LOGGER, TASK_LOGGER):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)


@flow(name="ariel-agent-on-prefect", persist_result=False, validate_parameters=True)
async def agent_on_prefect(config: RunConfig, input: str | None = None) -> str:  # noqa: A002 - the runtime's name
    """`flows.agent.agent_run`, its steps Prefect tasks."""
    _on_prefect()
    return await flows.agent.agent_run(config, input)
