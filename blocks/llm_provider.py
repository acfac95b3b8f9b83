"""`LLMProvider`: the credentials and endpoint of a model provider, kept out of run parameters.

A run loads the block by name inside its container; the key never travels in
deployment parameters, job variables or logs, and Prefect obfuscates it in its UI.

Example (saving a block needs a Prefect server, so this is no doctest)::

    LLMProvider(api_key="sk-...", api_base=None).save("openai-main")
    # agent spec: {"model": "openai/gpt-4o-mini", "provider": "openai-main", ...}
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class LLMProvider(Block):
    """An LLM provider's API key and, for self-hosted or compatible servers, its base URL."""

    _block_type_name: ClassVar[str] = "Ariel LLM Provider"
    _block_type_slug: ClassVar[str] = "ariel-llm-provider"
    _description: ClassVar[str] = (
        "Credentials of an LLM provider for Ariel agents. Agents name this block in their 'provider' field."
    )

    api_key: SecretStr = Field(description="The provider's API key.", examples=["sk-..."])
    api_base: str | None = Field(
        default=None,
        description="Base URL, for self-hosted or OpenAI-compatible servers.",
        examples=["http://127.0.0.1:8000/v1"],
    )
