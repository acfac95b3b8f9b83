"""Writing the audit trail of mutating actions: who, in which org, did what to what, from where, how it ended."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from mcp_server.services.caller import Caller
from mcp_server.services.exceptions import ArielError, Conflict, Forbidden, Unavailable
from mcp_server.services.finishing import finishing
from mcp_server.store import Outcome, Store, StoreError, Unreachable

log = logging.getLogger("ariel.audit")


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

    Only Ariel's own errors (the store's too, turned into `Conflict`, or `Unavailable` when it could not serve)
    are recorded with their messages, which are written for people and hold no secrets; anything else is a bug,
    recorded without its text.
    """
    # Each record is written shielded: a cancel that lands as it is written must not lose the entry.
    try:
        yield
    except Forbidden as exc:
        with finishing():
            await record(store, caller, action, target, "denied", str(exc))
        raise
    except ArielError as exc:
        with finishing():
            await record(store, caller, action, target, "failed", str(exc))
        raise
    except StoreError as exc:  # the store's messages are written for people, like ours
        # A store that could not serve the action cannot take its record either: the caller hears why it failed.
        with finishing(), suppress(Unreachable):
            await record(store, caller, action, target, "failed", str(exc))
        raise (Unavailable if isinstance(exc, Unreachable) else Conflict)(str(exc)) from exc
    except Exception:
        with finishing():
            await record(store, caller, action, target, "failed", "internal error; see the server log")
        raise
    except GeneratorExit:  # closed unfinished, never run on: nothing to wait for here
        raise
    except BaseException:  # the caller cancelled the call, or the server is stopping: recorded even so
        with finishing():
            # Not "nothing happened": a create undoes itself, but a change may have been applied before the cancel.
            await record(store, caller, action, target, "failed", "cancelled before it answered")
        raise
    with finishing():
        try:
            await record(store, caller, action, target, "ok")
        except StoreError as exc:
            # Done all the same: answering a failure would hide what was done (an agent deployed, a key made and
            # never shown). The store's trouble is the operator's, in the server log.
            log.error("audit: %s on %s by %s succeeded, but its record could not be written (%s)", action, target,
                      caller.user_label, exc)
