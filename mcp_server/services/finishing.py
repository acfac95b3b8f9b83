"""Clean-up that runs to its end when the call it undoes was cancelled.

An MCP client that cancels a call (`notifications/cancelled`), or closes its connection, cancels the anyio scope
the tool runs in, and such a scope cancels every await within it again: a clean-up in an `except BaseException`
would stop at its first await and leave half of what it undoes (an agent's row without its deployment, a
reserved name no agent holds). Shielded, it runs on; bounded, a clean-up that hangs (Prefect not answering)
gives up after `seconds`, and the error it followed goes on either way.

Example::

    try:
        await self._deploy(caller, record, spec)
    except BaseException:
        with finishing():
            await self.store.delete_agent(caller.org_id, record.id)
        raise
"""

from __future__ import annotations

import anyio

CLEANUP_WAIT = 30.0  # seconds; a clean-up still waiting then (Prefect not answering) is left undone


def finishing(seconds: float = CLEANUP_WAIT) -> anyio.CancelScope:
    """A scope the caller's cancellation does not reach, that ends its block after `seconds`."""
    return anyio.move_on_after(seconds, shield=True)
