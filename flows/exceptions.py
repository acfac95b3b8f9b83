"""Errors of the agent runtime.

    RuntimeFailure            a run cannot go on (it fails, with this message)
    ├── StepLimitReached      the agent used all its LLM steps without a reply
    ├── RunTimedOut           the run's wall-clock budget ran out
    ├── VersionNotApproved    nobody approved the manifest of the version the run carries
    └── ConfigTampered        the run's configuration is not one the control plane signed
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


class ToolRefused(Exception):
    """A tool call the runtime will not perform; the message goes back to the model."""
