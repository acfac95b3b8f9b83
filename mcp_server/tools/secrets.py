"""Tools about the keys agents use."""

from __future__ import annotations

from typing import Annotated

from fastmcp import Context, FastMCP
from pydantic import Field, SecretStr

from mcp_server.services.secrets import SecretAction
from mcp_server.services.views import SecretsActionView
from mcp_server.tools.middleware.caller import caller_of, services_of


def register(mcp: FastMCP) -> None:
    @mcp.tool(annotations={"destructiveHint": True})
    async def manage_secrets(
        ctx: Context,
        action: Annotated[
            SecretAction,
            Field(description="list (the LLM providers agents can name, never their keys); set_provider (create "
                  "or replace one; admins); delete_provider (admins; confirm when agents name it)."),
        ],
        name: Annotated[
            str | None, Field(description="set_provider, delete_provider: the provider's name, which agents put "
                              "in their 'provider' field.", examples=["openai-main"])
        ] = None,
        api_key: Annotated[
            SecretStr | None, Field(description="set_provider: the provider's API key. It is stored sealed "
                                    "(encrypted with this organization's own key), reaches only this "
                                    "organization's runs, and is never shown again; it does pass through this "
                                    "chat, so on the Ariel host `ariel provider set` keeps it out.")
        ] = None,
        api_base: Annotated[
            str | None, Field(description="set_provider: base URL of a self-hosted or OpenAI-compatible server; "
                              "leave out for the model's own provider.", examples=["https://llm.example.com/v1"])
        ] = None,
        confirm: Annotated[bool, Field(description="delete_provider: true to delete one that agents name.")] = False,
    ) -> SecretsActionView:
        """The LLM provider keys this organization's agents use: list them, set one, delete one.

        Keys never come back out: answers show names, base URLs and which agents use each.
        """
        return await services_of(ctx).secrets.manage(await caller_of(ctx), action, name, api_key, api_base, confirm)
