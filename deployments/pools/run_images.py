"""Which runtime image a run needs: the lean one where it can, the full one where it must.

Two images are built from `docker/Dockerfile`: the full runtime image (`ARIEL_RUNTIME_IMAGE`, litellm, Node.js
and the stdio catalog's servers) and its lean twin (the same name with `-lean`: the runtime alone, no Prefect,
under a third of its size). A run needs the full image when it calls its model itself (`calls_models_here`) or
starts a stdio MCP server; every other run of Ariel's own pools takes the lean one. The worker host chooses
per run, from the run's configuration (`deployments.pools.standby`), so deployments, ad hoc runs and retries
all agree, and a worker host whose engine lacks the lean image runs everything in the full one.

Example:
    >>> lean_image_of("ariel-runtime:local")
    'ariel-runtime-lean:local'
    >>> lean_image_of("registry.example.com:5000/acme/ariel-runtime:1.2")
    'registry.example.com:5000/acme/ariel-runtime-lean:1.2'
    >>> lean_image_of("ariel-runtime"), lean_image_of("ariel-runtime@sha256:" + "0" * 64)
    ('ariel-runtime-lean', None)
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from deployments.pools.work_pools import is_own_pool
from flows.config import RunConfig
from flows.models import SCRIPTED_MODEL

LEAN_SUFFIX = "-lean"

# litellm providers (a model id's prefix) whose calls authenticate with the api_key given and nothing else. The
# gateway's process has the control plane's environment: a provider that would find credentials there (Bedrock's
# and SageMaker's AWS keys, Vertex's Google ones, an OPENAI_API_KEY for a model named with no key) must never get
# them for a tenant's run. So the gateway calls a model only with a key it passes itself (the agent's provider's,
# or a placeholder for a keyless self-hosted base URL), and only for these; any other model is called by its run.
KEYED_BY_API_KEY = frozenset({
    "openai", "text-completion-openai", "anthropic", "gemini", "mistral", "groq", "deepseek", "openrouter",
    "together_ai", "fireworks_ai", "xai", "perplexity", "cohere", "cohere_chat", "cerebras", "deepinfra",
    "hosted_vllm", "ollama", "ollama_chat", "lm_studio", "nvidia_nim",
})
KEYED_CLOUD = KEYED_BY_API_KEY - {"hosted_vllm", "ollama", "ollama_chat", "lm_studio"}
"""Of those, the hosted services, which answer nothing without a key; the others are servers one runs oneself."""


def lean_image_of(image: str) -> str | None:
    """The lean twin's name of the full runtime image `image`; None for an image named by its digest alone."""
    if "@" in image:
        return None
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return f"{image[:colon]}{LEAN_SUFFIX}{image[colon:]}"
    return f"{image}{LEAN_SUFFIX}"


def calls_models_here(pool: str | None, config: RunConfig) -> bool:
    """Whether a run of `config` in `pool` calls its model itself rather than through the gateway.

    Itself: on an org's own hardware (what it touches stays on the org's network), and for a model the gateway
    cannot call with a key of its own giving (see `KEYED_BY_API_KEY`; a run's container has no credentials in
    its environment to find). Through the gateway: the offline scripted model, and a keyed model that names a
    provider or a base URL.
    """
    if is_own_pool(pool):
        return True
    if config.model == SCRIPTED_MODEL:
        return False
    prefix, slash, _ = config.model.partition("/")
    return not (slash and prefix in KEYED_BY_API_KEY and (config.provider or config.api_base))


def needs_full_image(pool: str | None, parameters: dict[str, Any] | None) -> bool:
    """Whether a run of `pool` with these flow-run parameters needs the full runtime image.

    A configuration that does not read as one (a run made by hand in the Prefect UI, say) gets the full image:
    it fails there as it would anywhere, with the runtime's own message.
    """
    try:
        config = RunConfig.model_validate((parameters or {}).get("config"))
    except ValidationError:
        return True
    return calls_models_here(pool, config) or any(server.transport == "stdio" for server in config.mcp_servers)
