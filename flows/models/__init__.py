"""Model access for the runtime: litellm, plus the offline `ariel/scripted` provider.

Light on purpose: importing litellm costs seconds, so it happens inside the
functions that need it, never when the control plane imports this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.config import RunConfig
    from flows.credentials import ProviderCredentials

SCRIPTED_MODEL = "ariel/scripted"
SCRIPTED_PROVIDER = "ariel"


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


def is_transient_llm_error(error: BaseException | None) -> bool:
    """Whether retrying the same LLM call may succeed (rate limits, timeouts, 5xx, dropped connections)."""
    if error is None:
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
