"""An object or a list sent as JSON text is taken for what it encodes, where the parameter takes one and no text.

Some MCP clients send an argument whose schema is "an object, or null" (`create_agent`'s `schedule`) as the JSON
text of the object: the MCP Inspector's CLI does, having no type to go by in an `anyOf`. Refused, the caller
read that the value "should be a valid dictionary"; yet what it meant is plain. A parameter that also takes text
keeps what was sent as it is: there the text may be meant.
"""

from __future__ import annotations

import json
from typing import Any

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

_OPENERS = ("{", "[")
_KINDS = ("object", "array")


class DecodeJsonText(Middleware):
    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        arguments = context.message.arguments or {}
        sent_as_text = [name for name, value in arguments.items()
                        if isinstance(value, str) and value.lstrip()[:1] in _OPENERS]
        if sent_as_text and context.fastmcp_context is not None:
            tool = await context.fastmcp_context.fastmcp.get_tool(context.message.name)
            schema = tool.parameters if tool is not None else {}
            properties = schema.get("properties") or {}
            for name in sent_as_text:
                kinds = schema_types(properties.get(name) or {}, schema.get("$defs") or {})
                if "string" in kinds or not kinds & set(_KINDS):
                    continue
                try:
                    decoded = json.loads(arguments[name])
                except (ValueError, RecursionError):  # not JSON, or nested past reason: the schema's refusal stands
                    continue
                if ("object" if isinstance(decoded, dict) else "array" if isinstance(decoded, list) else "") in kinds:
                    arguments[name] = decoded
        return await call_next(context)


def schema_types(schema: dict[str, Any], definitions: dict[str, Any], depth: int = 0) -> set[str]:
    """The JSON types a parameter's schema takes, through `anyOf`, `oneOf` and local `$ref`s; "string" among them
    for a schema (or an option) that takes anything, text included.

    >>> sorted(schema_types({"anyOf": [{"$ref": "#/$defs/Schedule"}, {"type": "null"}]},
    ...                     {"Schedule": {"type": "object"}}))
    ['null', 'object']
    >>> sorted(schema_types({"type": ["string", "null"]}, {}))
    ['null', 'string']
    >>> sorted(schema_types({"anyOf": [{"type": "object"}, {}]}, {}))  # `dict | Any`: text may be meant
    ['object', 'string']
    """
    if depth > 8:  # a reference that leads back to itself
        return set()
    if not schema.keys() & {"type", "$ref", "anyOf", "oneOf", "allOf", "enum", "const"}:
        return {"string"}  # no constraint on its type
    found: set[str] = set()
    kind = schema.get("type")
    found.update([kind] if isinstance(kind, str) else kind if isinstance(kind, list) else [])
    reference = schema.get("$ref")
    if isinstance(reference, str) and reference.startswith("#/$defs/"):
        found |= schema_types(definitions.get(reference.removeprefix("#/$defs/")) or {}, definitions, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key) or []:
            if isinstance(option, dict):
                found |= schema_types(option, definitions, depth + 1)
    return found
