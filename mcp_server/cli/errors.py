"""Errors the `ariel` command shows as one line: what went wrong and what to do, never a stack trace.

Kept apart from the modules that raise them, which import Prefect and the store: `ariel --help` imports this.
"""

from __future__ import annotations


class StartupFailed(Exception):
    """`ariel up` cannot start; the message says why and what to do."""


def for_people(exc: BaseException) -> bool:
    """Whether `exc` is one of Ariel's own errors, whose message is written for people and holds no secret.

    Imported here, not at the top: each module is loaded already when its error was raised.
    """
    from blocks.object_store import ObjectStoreError
    from deployments.exceptions import DeploymentError
    from mcp_server.keyfiles import KeyFileError
    from mcp_server.services.exceptions import ArielError
    from mcp_server.store import StoreError

    return isinstance(exc, StartupFailed | ArielError | DeploymentError | StoreError | ObjectStoreError | KeyFileError)
