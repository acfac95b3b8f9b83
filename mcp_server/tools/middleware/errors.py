"""The edge where errors become messages: readable, short, and quoting little of what was sent.

fastmcp's argument-validation errors are made to read like Ariel's own: field,
then what is allowed. The services' errors need no mapping: `ArielError` is a
`ToolError`, which fastmcp passes through. The store's and the deployment
layer's errors, written for people too, become a `ToolError` here. Anything unexpected is masked by
fastmcp (`mask_error_details=True`): the client sees a generic message, the
server log keeps the traceback.

Every message leaving is then bounded (`bounded`): messages quote what they
were sent through `deployments.text.quote`, and this is the net under them,
for every tool: a run of more than `QUOTE_LIMIT` characters of any argument
is cut to that many, and no message is longer than `MESSAGE_LIMIT`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Final

from fastmcp.exceptions import ToolError
from fastmcp.exceptions import ValidationError as ArgumentsInvalid
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from pydantic import ValidationError

from deployments.exceptions import DeploymentError
from deployments.text import QUOTE_LIMIT
from mcp_server.store import StoreError

log = logging.getLogger("ariel.tools")

MESSAGE_LIMIT: Final = 2000
"""No refusal is longer: one that lists many bad fields is cut, and says so."""


class ReadableErrors(Middleware):
    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        try:
            return await call_next(context)
        except (ToolError, ArgumentsInvalid) as exc:
            message, cause = _readable(exc)
            short = bounded(message, context.message.arguments or {})
            if short == message and cause is None:
                raise
            raise ToolError(short) from (cause or exc)


def _readable(exc: ToolError | ArgumentsInvalid) -> tuple[str, BaseException | None]:
    """The message for the client, and the exception to chain it to when it is not `exc`'s own."""
    if isinstance(exc, ArgumentsInvalid):
        # fastmcp checked the arguments against the tool's schema; pydantic's error is the cause.
        cause = exc.__cause__
        detail = describe_validation(cause) if isinstance(cause, ValidationError) else str(exc)
        return f"invalid arguments: {detail}", exc
    if isinstance(exc.__cause__, StoreError | DeploymentError):
        # fastmcp masks what a tool raises into "Error calling tool ..." and keeps it as the cause.
        return str(exc.__cause__), exc.__cause__
    return str(exc), None


def describe_validation(error: ValidationError) -> str:
    """One line per bad field: where it is and what is allowed, without pydantic's URLs or Ariel's class names.

    >>> from pydantic import BaseModel
    >>> class ScheduleSpec(BaseModel):
    ...     cron: str
    >>> class Arguments(BaseModel):
    ...     schedule: ScheduleSpec
    >>> try:
    ...     Arguments.model_validate({"schedule": "every weekday at 8"})
    ... except ValidationError as exc:
    ...     describe_validation(exc)
    "schedule: must be a JSON object of the fields the tool's schema lists for it, not a string"
    """
    parts = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "arguments"
        if item["type"] == "model_type":  # pydantic names the model class, which says nothing to the caller
            message = (f"must be a JSON object of the fields the tool's schema lists for it, not "
                       f"{_json_kind(item.get('input'))}")
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def _json_kind(value: Any) -> str:
    """What a JSON value is, in words: 'a string', 'a list', ..."""
    kinds = ((bool, "true or false"), (str, "a string"), (int | float, "a number"), (list, "a list"))
    return "null" if value is None else next((kind for type_, kind in kinds if isinstance(value, type_)), "that")


def bounded(message: str, arguments: dict[str, Any]) -> str:
    """`message` with no run of more than `QUOTE_LIMIT` characters of any string in `arguments`, and at most
    `MESSAGE_LIMIT` characters long.

    >>> bounded("no agent " + repr("x" * 500) + "; list_agents shows them", {"agent": "x" * 500})
    "no agent 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…'; \
list_agents shows them"
    """
    for sent in {text for text in _strings(arguments) if len(text) > QUOTE_LIMIT}:
        cut = _cut_echoes(message, sent)
        if cut != message:
            log.warning("a refusal quoted more than %s characters of what was sent; cut", QUOTE_LIMIT)
        message = cut
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - 40] + f"… ({len(message) - MESSAGE_LIMIT + 40} characters more)"
    return message


def _strings(value: Any) -> Iterator[str]:
    """Every string in a tool's arguments, keys included, as sent and as a repr would show it."""
    if isinstance(value, str):
        yield value
        yield repr(value)[1:-1]
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _cut_echoes(message: str, sent: str) -> str:
    """`message` with each run of more than `QUOTE_LIMIT` characters of `sent` cut to `QUOTE_LIMIT` and '…'.

    Found by pieces of half the limit at steps of half the limit: any run that long holds one whole.
    Compared case-blind, as services may lower what they quote (slugs, host names).
    """
    piece = QUOTE_LIMIT // 2
    if len(message.lower()) != len(message) or len(sent.lower()) != len(sent):
        lowered_message, lowered_sent = message, sent  # a rare letter whose lower case is longer: compare as is
    else:
        lowered_message, lowered_sent = message.lower(), sent.lower()
    tried: set[str] = set()  # a repetitive argument has few distinct pieces: each is looked for once
    for start in range(0, len(sent) - piece + 1, piece):
        if (looked_for := lowered_sent[start:start + piece]) in tried:
            continue
        tried.add(looked_for)
        at = lowered_message.find(looked_for)
        while at >= 0:
            begin, end, offset = at, at + piece, start
            while begin > 0 and offset > 0 and lowered_message[begin - 1] == lowered_sent[offset - 1]:
                begin, offset = begin - 1, offset - 1
            while (end < len(message) and offset + end - begin < len(sent)
                   and lowered_message[end] == lowered_sent[offset + end - begin]):
                end += 1
            if end - begin > QUOTE_LIMIT:
                return _cut_echoes(message[: begin + QUOTE_LIMIT] + "…" + message[end:], sent)
            at = lowered_message.find(looked_for, at + 1)
    return message
