"""Tell a client waiting on a slow tool call that the call is still at work, so that its request timeout starts over.

MCP clients give up on a request after a timeout (60 s in the standard ones) unless progress arrives; those that
reset it on progress (the TypeScript SDK's `resetTimeoutOnProgress`, the MCP Inspector) then wait for the answer.
Most calls answer in well under a second, but one waits on Prefect: an approve while Prefect's embedded SQLite
database is locked took 133 s on the desktop under load (README, Desktop). A client that gave up then saw an error
for a call that went on to succeed. A notification every `PROGRESS_EVERY_SECONDS` past the first says it is still
at work; a client that asked for no progress (no progress token) is sent nothing.

`run_agent` reports its own progress (the run's state as it waits), and progress must only grow: it is left alone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from mcp_server.services.progress import PROGRESS_EVERY_SECONDS

REPORTS_ITS_OWN: Final = frozenset({"run_agent"})


class KeepAlive(Middleware):
    """Progress every `every` seconds while a tool call is at work, from the first `every` on."""

    def __init__(self, every: float = PROGRESS_EVERY_SECONDS) -> None:
        self.every = every

    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        ctx = context.fastmcp_context
        tool = context.message.name
        if ctx is None or tool in REPORTS_ITS_OWN:
            return await call_next(context)
        started = time.monotonic()

        async def tell() -> None:
            while True:
                await asyncio.sleep(self.every)
                waited = time.monotonic() - started
                try:
                    await ctx.report_progress(waited, None, f"{tool} is still at work ({waited:.0f} s)")
                except Exception:  # the client went away: the call goes on, its answer reaches nobody
                    return

        # The call stays in this task (its context, its cancellation); only the notifications go beside it.
        telling = asyncio.create_task(tell())
        try:
            return await call_next(context)
        finally:
            telling.cancel()
            await asyncio.gather(telling, return_exceptions=True)
