"""Errors of the agent runtime.

    RuntimeFailure            a run cannot go on (it fails, with this message)
    ├── StepLimitReached      the agent used all its LLM steps without a reply
    ├── RunTimedOut           the run's wall-clock budget ran out
    ├── VersionNotApproved    nobody approved the manifest of the version the run carries
    ├── ConfigTampered        the run's configuration is not one the control plane signed
    └── ModelCallFailed       the gateway made the run's model call, and the provider (or the gateway) refused it
    UnfitContainer            the run's container lacks what its settings name: it exits with
                              UNFIT_EXIT_CODE before the run begins, and no attempt is retried
    ToolRefused               meant for the model: the tool call was not allowed
                              or malformed; the model sees the message and may
                              try something else
"""

from __future__ import annotations


class RuntimeFailure(Exception):
    """A run cannot continue."""


class StepLimitReached(RuntimeFailure):
    """The agent used `max_steps` LLM calls without giving a final reply."""


class RunTimedOut(RuntimeFailure):
    """The run's `timeout_seconds` budget ran out."""


class VersionNotApproved(RuntimeFailure):
    """The run carries a version whose manifest awaits approval (say, one an operator started in the Prefect UI)."""


class ConfigTampered(RuntimeFailure):
    """The run's configuration carries no valid signature of the control plane: it was changed outside Ariel.

    The message starts with "tampered: " and says which check failed.
    """


UNFIT_EXIT_CODE = 78
"""How a run's container exits on `UnfitContainer` (sysexits.h's EX_CONFIG): recovery does not retry that exit,
since every attempt in the same container image with the same settings stops the same way."""


class UnfitContainer(Exception):
    """The run's settings name what its container does not have (a CA file on the worker's machine)."""


class ToolRefused(Exception):
    """A tool call the runtime will not perform; the message goes back to the model."""


class ToolMayHaveActed(Exception):
    """A tool call that failed after it may have acted (a POST whose answer never came): not made again, whatever the
    agent's `tool_retries`; the message goes back to the model."""


class ModelCallFailed(RuntimeFailure):
    """A model call the gateway made for the run failed; `kind` is the provider error's type, as litellm names it.

    `transient`: whether the same call again may succeed (a rate limit, a timeout, a 5xx), as the gateway judged it.
    A transcript shows it as the error the call met (`AuthenticationError: …`), as if the run had made the call.
    """

    def __init__(self, kind: str, message: str, *, transient: bool) -> None:
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind
        self.detail = message
        self.transient = transient

    def __reduce__(self) -> tuple[object, ...]:
        # Prefect keeps a failed task's exception as its state's data: it must survive a copy.
        return (_model_call_failed, (self.kind, self.detail, self.transient))


def _model_call_failed(kind: str, message: str, transient: bool) -> ModelCallFailed:
    return ModelCallFailed(kind, message, transient=transient)
