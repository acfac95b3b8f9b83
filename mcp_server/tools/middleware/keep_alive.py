"""Tell a client waiting on a slow tool call that the call is still at work, so that its request timeout starts over.

MCP clients give up on a request after a timeout (60 s in the standard ones) unless progress arrives; those that
reset it on progress (the TypeScript SDK's `resetTimeoutOnProgress`, the MCP Inspector) then wait for the answer.
Most calls answer in well under a second, but one waits on Prefect: an approve while Prefect's embedded SQLite
database is locked took 133 s on the desktop under load (README, Desktop). A client that gave up then saw an error
for a call that went on to succeed. Whenever `PROGRESS_EVERY_SECONDS` pass without a notification, one says the
call is still at work; a client that asked for no progress (no progress token) is sent nothing.

`run_agent` also reports the run's state as it waits on it: both go through the call's `CallProgress`, whose
progress only grows, and this one stays quiet while the other speaks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from mcp_server.services.progress import CALL_PROGRESS, PROGRESS_EVERY_SECONDS, CallProgress


class KeepAlive(Middleware):
    """Progress whenever `every` seconds pass without any while a tool call is at work."""

    def __init__(self, every: float = PROGRESS_EVERY_SECONDS) -> None:
        self.every = every

    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        ctx = context.fastmcp_context
        if ctx is None:
            return await call_next(context)
        tool = context.message.name
        progress = CallProgress(ctx.report_progress)

        async def tell() -> None:
            while True:
                await asyncio.sleep(max(0.1, self.every - progress.quiet_for()))
                if progress.quiet_for() < self.every:
                    continue  # the call itself spoke meanwhile
                waited = progress.elapsed()
                try:
                    await progress(waited, None, f"{tool} is still at work ({waited:.0f} s)")
                except Exception:  # the client went away: the call goes on, its answer reaches nobody
                    return

        # The call stays in this task (its context, its cancellation); only the notifications go beside it.
        telling = asyncio.create_task(tell())
        token = CALL_PROGRESS.set(progress)
        try:
            return await call_next(context)
        finally:
            CALL_PROGRESS.reset(token)
            telling.cancel()
            await asyncio.gather(telling, return_exceptions=True)

