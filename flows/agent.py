"""The agent runtime flow: a tool-calling loop over a litellm model.

Each LLM call and each tool call is its own Prefect task run (`flows.engine.steps`),
so the Prefect UI shows every step with its timing, and a transient failure
retries only that step, with exponential backoff. Retries happen here only: litellm is called
with `num_retries=0` so retries do not stack.

On Ariel's own pools the gateway makes the model calls (`flows.models.remote`):
the run holds no provider key and imports no litellm. On an org's own hardware,
and for models the gateway does not call, the run calls litellm itself.

The run ends with the model's reply (logged, stored as the `agent-result`
artifact and returned), or fails when the step limit or the time budget runs out.
As it goes it records its transcript, and at its end its usage, as the
`transcript` and `usage` artifacts (see `flows.transcript`).

Tools of the MCP servers the agent names are offered beside the built-in ones,
as `<server>__<tool>` (`flows.mcp.client`): each call is its own task too, and
what was refused, failed or flagged is logged as a WARNING that `diagnose_run`
reads (`MCP tool refused: …`, `MCP tool failed: …`, `MCP tool changed since
approval: …`, `MCP result flagged: …`).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from pydantic import ValidationError

from flows.config import RunConfig
from flows.credentials import ProviderCredentials, RunCredentials, fetch_credentials
from flows.engine.context import api_url, current_run_or_none
from flows.engine.logs import run_logger
from flows.engine.steps import step as task_run
from flows.exceptions import (
    RunTimedOut,
    RuntimeFailure,
    StepLimitReached,
    ToolMayHaveActed,
    ToolRefused,
    VersionNotApproved,
)
from flows.journal import Journal
from flows.mcp.screening import fence, screen
from flows.models import complete, is_transient_llm_error
from flows.network.egress import agent_egress
from flows.network.guard import ProtectedEndpoint, protected_in_environment, refuse_protected
from flows.signing import verify_from_environment
from flows.telemetry import attach_tenant, detach_tenant, record_run
from flows.tools import BUILTIN_TOOLS
from flows.tools.http_request import SAFE_METHODS
from flows.tools.registry import ToolContext, ToolResult
from flows.transcript import (
    RESULT_ARTIFACT_KEY,
    Recorder,
    Redactor,
    TranscriptKeeper,
    artifact_key,
    artifact_names,
    publish_artifact,
)

if TYPE_CHECKING:
    from flows.mcp.client import McpToolbox

DEFAULT_INPUT = "Run your instructions now."
MCP_CALL_SECONDS = 60.0


_TRANSIENT_TOOL_ERRORS = tuple({error for tool in BUILTIN_TOOLS.values() for error in tool.transient})


def _retry_tool(error: BaseException) -> bool:
    return isinstance(error, _TRANSIENT_TOOL_ERRORS)


def backoff(retries: int) -> list[float]:
    """Seconds before each retry: 1, 2, 4, ... up to a minute.

    Prefect's `exponential_backoff` retries the first time at once, which a rate limit would refuse again.
    """
    return [float(min(60, 2**attempt)) for attempt in range(retries)]


async def llm_call(
    config: RunConfig, messages: list[dict[str, Any]], timeout: float, protected: tuple[ProtectedEndpoint, ...] = (),
    provider: ProviderCredentials | None = None, mcp_tools: list[dict[str, Any]] | None = None,
    through_gateway: bool = False,
) -> dict[str, Any]:
    """One model turn; returns the assistant message, its token usage and its price.

    `mcp_tools`: the function schemas of the MCP tools the run offers (`McpToolbox.schemas`).
    `through_gateway`: Ariel's gateway makes the call (runs on Ariel's pools, which hold no provider key).
    """
    tools = [BUILTIN_TOOLS[name].schema() for name in config.tools] + (mcp_tools or [])
    if through_gateway:
        from flows.models.remote import complete_through_gateway

        return await complete_through_gateway(messages, tools, timeout)
    with agent_egress(protected):
        return await complete(config, messages, tools, timeout, provider)


async def tool_call(name: str, arguments: str, context: ToolContext) -> ToolResult:
    """Run one tool call; a refusal goes back to the model as the result."""
    try:
        if name not in context.granted_tools:
            raise ToolRefused(f"no tool named {name!r}; this agent has: {', '.join(context.granted_tools) or 'none'}")
        tool = BUILTIN_TOOLS[name]
        try:
            args = tool.arguments.model_validate_json(arguments or "{}")
        except ValidationError as exc:
            raise ToolRefused(f"bad arguments for {name}: {exc.errors()[0]['msg']}") from None
        # In a thread: tools are plain blocking code, and the run's timeout must still fire.
        with agent_egress(context.protected):  # to_thread carries the guard into the thread
            return await asyncio.to_thread(tool.run, args, context)
    except ToolRefused as refusal:
        run_logger().warning("Tool call refused: %s", refusal)
        return ToolResult(json.dumps({"error": str(refusal)}))


# No retries: an MCP tool may act on the world (create an issue, send a message), and a call that timed out may
# have done so; the model hears what happened and decides.
async def mcp_call(function: str, arguments: str, toolbox: McpToolbox, timeout: float,
                   redactor: Redactor) -> tuple[str, list[str], str | None]:
    """Call one MCP tool; returns what the model gets, what screening found in it, and the tool's text uncut when
    the model gets it cut (for the transcript; None otherwise).

    A refused or failed call goes back to the model as `{"error": ...}`; a flagged result goes back fenced.
    """
    from flows.mcp.client import McpFailed, McpRefused

    logger = run_logger()
    whole: str | None = None
    try:
        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            args = None
        if not isinstance(args, dict):
            raise McpRefused(f"bad arguments for {function}: a JSON object is expected")
        outcome = await toolbox.call(function, args, timeout)
    # Every text below may quote the server (its error messages too): redacted in the log, since a server may echo
    # the credential it was sent, and screened like a result, since the model reads it all the same.
    # ensure_ascii=False: an escaped invisible character would pass the screening unseen.
    except McpRefused as refusal:
        logger.warning("MCP tool refused: %s: %s", function, redactor.text(str(refusal)))
        text = json.dumps({"error": str(refusal)}, ensure_ascii=False)
    except McpFailed as failure:
        logger.warning("MCP tool failed: %s: %s", function, redactor.text(str(failure)))
        text = json.dumps({"error": f"{function} failed: {failure}"}, ensure_ascii=False)
    else:
        text, whole = outcome.text, outcome.whole
        if outcome.is_error:
            logger.warning("MCP tool failed: %s: the tool reported an error: %s", function,
                           redactor.text(text[:300]))
            text = json.dumps({"error": f"{function} reported an error: {text}"}, ensure_ascii=False)
    findings = screen(text)
    if findings:
        logger.warning("MCP result flagged: %s: %s", function, "; ".join(findings))
        text = fence(text, findings)
    # The model never reads past its cut, but a person's assistant reading the transcript may: fenced alike.
    if whole is not None and (found_in_whole := screen(whole)):
        whole = fence(whole, found_in_whole)
    return text, findings, whole


async def agent_run(config: RunConfig, input: str | None = None) -> str:
    """Play one agent version until it replies, or its step or time budget runs out: what each agent's flow runs,
    executed by `flows.engine`."""
    # First: a configuration the control plane did not sign (parameters edited in Prefect) must not run at all.
    verify_from_environment(config)
    if config.approved is False:
        # Before any key is loaded or any call made: the manifest is what a person agreed it may do.
        raise VersionNotApproved(
            f"version {config.version} of agent {config.name!r} awaits approval of its manifest, so it does not run; "
            "an admin approves it (update_agent action=approve), then run it again"
        )
    recorder = Recorder(config.model, Redactor(_environment_secrets()), keeper=TranscriptKeeper.for_this_run(),
                        names=artifact_names(config.org_slug, config.name))
    # Telemetry (when the pool exports it): this run's span, and every LLM and tool call's, carry these.
    run = current_run_or_none()
    if run is not None:  # the engine's state messages and log lines too: a failure's words may quote a key
        run.redact = recorder.redactor.text
    tenant: dict[str, str | int | None] = {
        "ariel.org": config.org_id, "ariel.agent": config.agent_id, "ariel.version": config.version,
        "ariel.run": run.run_id if run is not None else None}
    trace.get_current_span().set_attributes({key: value for key, value in tenant.items() if value is not None})
    tenant_token = attach_tenant(tenant)
    outcome = "failed"
    try:
        # A hard limit: also covers retries and their delays, which Prefect times per attempt.
        async with asyncio.timeout(config.limits.timeout_seconds):
            deadline = time.monotonic() + config.limits.timeout_seconds
            # Through the gateway, which checks the configuration against Prefect's copy before it hands a key.
            credentials = await fetch_credentials(config)
            provider = credentials.provider
            # The transcript must never show them.
            if provider is not None:
                recorder.redactor.add(provider.api_key.get_secret_value())
            if credentials.provider_fingerprint is not None:
                recorder.redactor.add_fingerprint(credentials.provider_fingerprint)
            for access in credentials.mcp.values():
                recorder.redactor.add(*access.secrets())
            reply = await _play(config, input, deadline=deadline, recorder=recorder, credentials=credentials)
            outcome = "completed"
            return reply
    except TimeoutError as exc:
        # A step ran past what was left of the budget (Prefect's TaskRunTimeoutError).
        outcome = "timed_out"
        raise RunTimedOut(_TIMED_OUT.format(seconds=config.limits.timeout_seconds)) from exc
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        # Also when the run fails: what a failed run used is worth knowing too.
        usage = await recorder.publish_usage()
        record_run(outcome, usage.duration_seconds, usage.model_dump())
        detach_tenant(tenant_token)


def _environment_secrets() -> list[str]:
    """Values of this process's key-like variables (OPENAI_API_KEY, ...), which a transcript must never show."""
    suffixes = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_AUTH_STRING")
    return [value for name, value in os.environ.items() if name.upper().endswith(suffixes)]


def _arguments(arguments: str) -> Any:
    """A tool call's arguments as the transcript shows them: the JSON object, or the text when it is not JSON."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


async def _play(
    config: RunConfig, input: str | None, deadline: float, recorder: Recorder, credentials: RunCredentials,
) -> str:
    logger = run_logger()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": config.instructions},
        {"role": "user", "content": input or DEFAULT_INPUT},
    ]
    logger.info(
        "Agent %r version %d starting: model %s, at most %d steps",
        config.name, config.version, config.model, config.limits.max_steps,
    )
    # Where the code came from tells a runtime-image run from a host process.
    logger.info("Runtime: Python %s, code at %s", platform.python_version(), Path(__file__).parent)
    # Once a run, not per call: the control plane does not move. In a thread: a DNS lookup blocks.
    protected = await asyncio.to_thread(protected_in_environment, api_url())
    provider = credentials.provider
    # Through the gateway, the provider's base URL is the gateway's to check: the run does not know it.
    api_base = config.api_base or (provider.api_base if provider is not None else None)
    if api_base:
        # litellm posts to the base URL with the agent's messages and reads the answer back into the run:
        # pointed at the Prefect API (a path, '?' or '#' away), it would read every org's data.
        try:
            await asyncio.to_thread(refuse_protected, api_base, protected)
        except ToolRefused as refused:
            raise RuntimeFailure(f"the model's base URL: {refused}; change api_base or the provider's") from None
    if not config.mcp_servers:
        return await _loop(config, messages, deadline, recorder, credentials, protected, None)
    from flows.mcp.client import CONNECT_SECONDS, open_toolbox  # the MCP SDK: only runs that use it pay

    # Open for the whole run: each server's session is reused by every call to it.
    try:
        async with open_toolbox(config.mcp_servers, credentials.mcp, protected, logger=logger,
                                connect_seconds=min(CONNECT_SECONDS, _remaining(deadline)),
                                redact=recorder.redactor.text) as toolbox:
            return await _loop(config, messages, deadline, recorder, credentials, protected, toolbox)
    except BaseExceptionGroup as group:
        # The sessions' task groups wrap what the loop raised (the step's timeout, a step limit): the run's own
        # handling (RunTimedOut, StepLimitReached) must see it as it was raised.
        raise _sole(group) from None


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception a chain of single-exception groups wraps; the group itself when it holds several."""
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup) and len(found.exceptions) == 1:
        found = found.exceptions[0]
    return found


async def _loop(
    config: RunConfig, messages: list[dict[str, Any]], deadline: float, recorder: Recorder,
    credentials: RunCredentials, protected: tuple[ProtectedEndpoint, ...], toolbox: McpToolbox | None,
) -> str:
    logger = run_logger()
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    mcp_tools = toolbox.schemas() if toolbox is not None else []
    seen = 0  # messages the model got in an earlier call: the transcript shows each message once
    journal = await Journal.open()
    if journal.resumed:
        done = sum(1 for entry in journal.steps.values() if entry.status == "done")
        logger.warning("Run resumed: %d step(s) done before it was interrupted are replayed from its journal, not "
                       "made again", done)
    seq = 0  # the position of each LLM and tool call in the run: the same in every attempt, as replay keeps it
    for step in range(1, config.limits.max_steps + 1):
        llm_name = f"llm · step {step}"
        seq += 1
        async with recorder.step("llm", "llm", step, llm_name, messages[seen:]) as recorded:
            replayed = journal.done(seq)
            if replayed is not None:
                turn = replayed.output
                recorded.replayed = True
            else:
                # An LLM call changes nothing in the world: one interrupted is simply made again.
                await journal.start(seq, "llm", "llm", step, None, repeatable=True)
                turn = await task_run(
                    llm_name,
                    lambda: llm_call(config, messages, timeout=_remaining(deadline), protected=protected,
                                     provider=credentials.provider, mcp_tools=mcp_tools,
                                     through_gateway=credentials.models_through_gateway),
                    task_key="llm_call",
                    retries=config.limits.llm_retries,
                    delays=backoff(config.limits.llm_retries),
                    retry_if=is_transient_llm_error,
                    timeout=_remaining(deadline),
                )
                await journal.finish(seq, None, turn)
            recorded.output = {
                "content": turn["message"].get("content"),
                "tool_calls": turn["message"].get("tool_calls") or [],
            }
            recorded.prompt_tokens = turn["usage"]["prompt_tokens"]
            recorded.completion_tokens = turn["usage"]["completion_tokens"]
        recorder.priced(turn)
        message = turn["message"]
        for key in usage:
            usage[key] += turn["usage"][key]
        messages.append(message)
        seen = len(messages)
        calls = message.get("tool_calls") or []
        if not calls:
            # Redacted before anything keeps it: the log line, the artifact and the flow's result.
            reply = recorder.redactor.text(str(message.get("content") or ""))
            logger.info("Reply: %s", reply)
            logger.info("Usage: %d prompt + %d completion tokens", usage["prompt_tokens"], usage["completion_tokens"])
            await publish_artifact(artifact_key(RESULT_ARTIFACT_KEY, recorder.names), "markdown", reply,
                                   "The agent's reply")
            return reply
        for call in calls:
            name = call["function"]["name"]
            seq += 1
            arguments = call["function"].get("arguments") or "{}"
            asked = {"name": name, "arguments": arguments}
            replayed = journal.done(seq)
            if replayed is not None:
                if replayed.input != asked:
                    raise RuntimeFailure(f"the run's journal does not match its replay at step {step} (it recorded "
                                         f"{replayed.name}, the model now asks for {name}); run the agent again")
                logger.info("Step %d: tool %s was done before the run was interrupted; its result is replayed",
                            step, name)
                async with recorder.step("tool", name, step, f"{name} · step {step}", _arguments(arguments)) as rec:
                    rec.output, rec.replayed = replayed.output, True
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": replayed.output})
                continue
            mcp = toolbox is not None and toolbox.owns(name)
            repeatable = toolbox.repeatable(name) if mcp and toolbox is not None else _repeatable(name, arguments)
            journal.refuse_uncertain(seq, f"tool {name} with arguments {_arguments(arguments)!r:.300}")
            logger.info("Step %d: calling tool %s", step, name)
            await journal.start(seq, "tool", name, step, asked, repeatable=repeatable)
            if mcp and toolbox is not None:
                result = await _mcp_step(toolbox, call, step, deadline, recorder)
                await journal.finish(seq, asked, result)
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
                continue
            context = ToolContext(
                granted_tools=tuple(config.tools),
                allowed_hosts=tuple(config.allowed_hosts),
                timeout_seconds=min(30.0, _remaining(deadline)),
                protected=protected,
            )
            tool_name = f"{name} · step {step}"
            try:
                async with recorder.step("tool", name, step, tool_name, _arguments(arguments)) as recorded:
                    answered = await task_run(
                        tool_name,
                        lambda: tool_call(name, arguments, context),  # noqa: B023 - awaited in this pass
                        task_key="tool_call",
                        retries=config.limits.tool_retries,
                        delays=backoff(config.limits.tool_retries),
                        retry_if=_retry_tool,
                        timeout=_remaining(deadline),
                    )
                    recorded.output, recorded.whole = answered.text, answered.whole
                result = answered.text
            except _TRANSIENT_TOOL_ERRORS as exc:
                # Still failing after its retries: the model hears it and can say so.
                logger.warning("Tool %s failed after %d retries: %s", name, config.limits.tool_retries, exc)
                result = json.dumps({"error": f"{name} failed: {type(exc).__name__}: {exc}"})
            except ToolMayHaveActed as exc:
                logger.warning("Tool %s failed, and may have acted: %s", name, exc)
                result = json.dumps({"error": f"{name} failed: {exc}"})
            await journal.finish(seq, asked, result)
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    raise StepLimitReached(
        f"the agent made {config.limits.max_steps} LLM calls without a final reply; "
        "raise limits.max_steps or make the instructions say when to stop"
    )


async def _mcp_step(toolbox: McpToolbox, call: dict[str, Any], step: int, deadline: float, recorder: Recorder) -> str:
    """One MCP tool call as its own task and transcript entry; what the model gets back."""
    name = call["function"]["name"]
    arguments = call["function"].get("arguments") or "{}"
    server, tool = toolbox.split(name)
    task_run_name = f"{name} · step {step}"
    async with recorder.step("tool", name, step, task_run_name, _arguments(arguments), server=server,
                             tool=tool) as recorded:
        result, findings, whole = await task_run(
            task_run_name,
            lambda: mcp_call(name, arguments, toolbox, min(MCP_CALL_SECONDS, _remaining(deadline)),
                             recorder.redactor),
            task_key="mcp_call",
            timeout=_remaining(deadline),
        )
        recorded.output, recorded.whole = result, whole
        recorded.flags = findings or None
    return result


def _repeatable(name: str, arguments: str) -> bool:
    """Whether a built-in tool call is safe to make twice: an HTTP GET or HEAD (which change nothing, by HTTP's
    own rules); any other method, or any other tool, may act on the world."""
    if name != "http_request":
        return False
    try:
        method = json.loads(arguments or "{}").get("method", "GET")
    except (ValueError, AttributeError):
        return False
    return isinstance(method, str) and method.upper() in SAFE_METHODS


_TIMED_OUT = (
    "the run used its whole time budget (limits.timeout_seconds = {seconds} s); raise it or give the agent less to do"
)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no time left in the run's budget")
    return left
