"""Model access for the runtime: litellm, plus the offline `ariel/scripted` provider.

Light on purpose: importing litellm costs seconds, so it happens inside the
functions that need it, never when the control plane imports this package.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flows.exceptions import ModelCallFailed, RuntimeFailure

if TYPE_CHECKING:
    from flows.config import RunConfig
    from flows.credentials import ProviderCredentials

SCRIPTED_MODEL = "ariel/scripted"
SCRIPTED_PROVIDER = "ariel"
MODELS_HERE_ENV = "ARIEL_MODELS_HERE"
"""Set ("1") in the standby containers of an org's own-hardware pool, whose runs call their model themselves: the
standby imports litellm before its run. Runs on Ariel's pools have the gateway call it, and import no litellm."""


def provider_of(model: str, api_base: str | None = None) -> str | None:
    """The litellm provider that serves `model` (at `api_base`: litellm knows some providers by their URL), as a
    run's call will ask it; None when litellm cannot tell, and every run would fail the same way. Imports litellm:
    seconds, the first time.

    Example:
        >>> provider_of("gpt-4o-mini"), provider_of(SCRIPTED_MODEL), provider_of("scripted/reply")
        ('openai', 'ariel', None)
        >>> provider_of("llama-3.1-8b-instant", "https://api.groq.com/openai/v1")
        'groq'
    """
    if model == SCRIPTED_MODEL:
        return SCRIPTED_PROVIDER
    import litellm

    litellm.suppress_debug_info = True  # else a failed lookup prints litellm's provider banner to stdout
    try:
        return str(litellm.get_llm_provider(model=model, api_base=api_base)[1])
    except litellm.BadRequestError:
        return None


def hosted_endpoint(api_base: str) -> bool:
    """Whether `api_base` is the address of a hosted service litellm knows (Groq's, DeepSeek's, ...), which answers
    nothing without a key, rather than a server of one's own. Imports litellm.

    Example:
        >>> hosted_endpoint("https://api.groq.com/openai/v1"), hosted_endpoint("http://10.0.0.5:8000/v1")
        (True, False)
    """
    import litellm

    hosts = {urlsplit(known if "://" in known else f"https://{known}").hostname
             for known in litellm.openai_compatible_endpoints}
    return urlsplit(api_base).hostname in hosts


def completion_kwargs(config: RunConfig, provider: ProviderCredentials | None) -> dict[str, Any]:
    """Provider-specific arguments of `litellm.completion` for this agent."""
    kwargs: dict[str, Any] = {}
    if provider is not None:
        kwargs["api_key"] = provider.api_key.get_secret_value()
        if provider.api_base:
            kwargs["api_base"] = provider.api_base
    if config.api_base:
        kwargs["api_base"] = config.api_base
    if config.model == SCRIPTED_MODEL:
        from flows.models.scripted import register_scripted_provider

        register_scripted_provider()
        kwargs["script"] = [step.model_dump(exclude_none=True) for step in config.script or []]
    return kwargs


async def complete(
    config: RunConfig, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, timeout: float,
    provider: ProviderCredentials | None,
) -> dict[str, Any]:
    """One model turn through litellm: the assistant message, its token usage and its price (None: unpriced).

    Where it runs is the caller's choice: in the run (own hardware) or in Ariel's gateway for the run
    (`mcp_server.gateway.models`); either wraps it in the egress guard.
    """
    try:
        import litellm
    except ImportError:  # the lean runtime image: the worker host chose it for a run whose gateway calls the model
        raise RuntimeFailure(
            f"this run calls its model {config.model!r} itself, but its container's image has no litellm (the lean "
            "runtime image); the worker host picks the full image for such runs: rebuild the images with `ariel "
            "build-image` and restart the worker"
        ) from None

    # The async path: litellm's sync completion leaves an event loop of its own unclosed.
    response = await litellm.acompletion(
        model=config.model,
        messages=messages,
        tools=tools or None,
        timeout=timeout,
        num_retries=0,  # Prefect's task retries are the only ones: retries must not stack
        **completion_kwargs(config, provider),
    )
    message = response.choices[0].message.model_dump(exclude_none=True)
    usage = getattr(response, "usage", None)
    prompt = getattr(usage, "prompt_tokens", 0) or 0
    completion = getattr(usage, "completion_tokens", 0) or 0
    return {
        "message": message,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
        "cost_usd": price(config.model, prompt, completion),
    }


def price(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """The price of these tokens on `model` in litellm's price list; None when it has no price for the model, or
    no litellm is installed (the lean runtime image: the gateway priced each of its calls)."""
    try:
        import litellm
    except ImportError:
        return None

    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:  # noqa: BLE001 - litellm raises plain exceptions for models it has no price for
        return None
    return round(float(prompt_cost) + float(completion_cost), 8)


def is_transient_llm_error(error: BaseException | None) -> bool:
    """Whether retrying the same LLM call may succeed (rate limits, timeouts, 5xx, dropped connections)."""
    if error is None:
        return False
    if isinstance(error, ModelCallFailed):  # made by the gateway, which judged it: no litellm import here
        return error.transient
    if isinstance(error, RuntimeFailure):  # the run's own refusal (the gateway refused the run): no retry helps
        return False
    if "litellm" not in sys.modules:  # not litellm's error (a task timeout, say): no import of seconds to say so
        return False
    import litellm

    transient = (
        litellm.RateLimitError,
        litellm.Timeout,
        litellm.APIConnectionError,
        litellm.ServiceUnavailableError,
        litellm.InternalServerError,
        litellm.BadGatewayError,
    )
    return isinstance(error, transient)
