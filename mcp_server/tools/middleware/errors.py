"""Make fastmcp's argument-validation errors read like Ariel's own: field, then what is allowed.

The services' errors need no mapping: `ArielError` is a `ToolError`, which
fastmcp passes through. The store's errors, written for people too, become a
`ToolError` here, at the edge. Anything unexpected is masked by fastmcp
(`mask_error_details=True`): the client sees a generic message, the server
log keeps the traceback.
"""

from __future__ import annotations

from typing import Any

from fastmcp.exceptions import ToolError
from fastmcp.exceptions import ValidationError as ArgumentsInvalid
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from pydantic import ValidationError

from mcp_server.store import StoreError


class ReadableArgumentErrors(Middleware):
    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        try:
            return await call_next(context)
        except ArgumentsInvalid as exc:
            # fastmcp checked the arguments against the tool's schema; pydantic's error is the cause.
            cause = exc.__cause__
            detail = describe_validation(cause) if isinstance(cause, ValidationError) else str(exc)
            raise ToolError(f"invalid arguments: {detail}") from exc
        except ToolError as exc:
            # fastmcp masks what a tool raises into "Error calling tool ..." and keeps it as the cause.
            if isinstance(exc.__cause__, StoreError):
                raise ToolError(str(exc.__cause__)) from exc.__cause__
            raise


def describe_validation(error: ValidationError) -> str:
    """One line per bad field: where it is and what is allowed, without pydantic's URLs."""
    parts = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "arguments"
        parts.append(f"{field}: {str(item['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)
