"""Writing the audit trail of mutating actions: who, in which org, did what to what, from where, how it ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp_server.caller import Caller
from mcp_server.exceptions import ArielError, Forbidden
from mcp_server.store import Outcome, Store


async def record(
    store: Store, caller: Caller, action: str, target: str, outcome: Outcome, detail: str | None = None
) -> None:
    await store.record_event(
        caller.org_id, actor_id=caller.user_id, actor=caller.user_label, action=action, target=target,
        origin=caller.origin, outcome=outcome, detail=detail,
    )


@asynccontextmanager
async def audited(store: Store, caller: Caller, action: str, target: str) -> AsyncIterator[None]:
    """Record the action's outcome: ok, denied (a role check) or failed (with the message the caller saw).

    Only Ariel's own errors are recorded as failures: their messages are written for
    people and hold no secrets; anything else is a bug, recorded without its text.
    """
    try:
        yield
    except Forbidden as exc:
        await record(store, caller, action, target, "denied", str(exc))
        raise
    except ArielError as exc:
        await record(store, caller, action, target, "failed", str(exc))
        raise
    except Exception:
        await record(store, caller, action, target, "failed", "internal error; see the server log")
        raise
    await record(store, caller, action, target, "ok")
