"""A run's transcript and usage, recorded as the run executes: kept by Ariel, summed up in Prefect artifacts.

The transcript is one entry per LLM call and per tool call, in order. Each
entry is sent as soon as the call returns (or fails: then with its error,
before the error fails the run) to Ariel's gateway, which keeps it whole and
sealed with the org's data key in the object store
(`mcp_server.services.transcripts`): a run that crashes keeps every step it
recorded, and step N costs one entry, not the whole transcript again. When the
run ends, its `transcript` artifact is a summary (calls, timings, errors, no
content) with a link to the whole transcript, which only people of the org
can follow. The `usage` artifact (tokens, calls, cost, duration) is published
when the run ends too, whether it replied or failed.

A run without Ariel's gateway (no run token, or an older control plane)
publishes the whole transcript so far as a table artifact after each entry,
with long texts cut (`deployments.runs.artifacts.read_transcript` reads it).

Secrets never reach either: the run's provider key, keys found in the
environment and anything shaped like a credential are replaced by `[redacted]`.
Credential shapes come from detect-secrets' maintained detectors (its regex
plugins: cloud, SaaS and VCS tokens, JWTs, private keys, passwords in URLs),
plus a few rules for what those detectors look for only in files (headers,
`key=value` pairs). Its entropy detectors are left out: they would take the run
and agent ids a transcript needs for secrets.

Example:
    >>> Redactor(["blockkey-7f3a"]).redact({"Authorization": "Bearer abc", "q": "k=blockkey-7f3a"})
    {'Authorization': '[redacted]', 'q': 'k=[redacted]'}
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, Field

from flows.exceptions import ModelCallFailed
from flows.fingerprints import Fingerprint

if TYPE_CHECKING:
    from detect_secrets.plugins.base import RegexBasedDetector

# The kinds of artifact a run publishes; each key is its kind and its org's and agent's names (`artifact_key`).
RESULT_ARTIFACT_KEY = "agent-result"
TRANSCRIPT_ARTIFACT_KEY = "transcript"
USAGE_ARTIFACT_KEY = "usage"
# Written by the control plane on a run that failed (`deployments.runs.failure_marks`), not by the run.
FAILURE_ARTIFACT_KEY = "failure"
MAX_KEY_NAMES = 80
REDACTED = "[redacted]"
TRANSCRIPT_ROUTE = "/ariel/v1/transcript"  # the gateway's; mcp_server.gateway.transcript
# A tool may fetch a whole page; an artifact table keeps its beginning. Each published
# version holds every entry so far, so unbounded texts would grow it quadratically.
MAX_TEXT = 10_000
# Kept by Ariel, one entry at a time: a text this long is kept whole (tool results reach the model cut far shorter).
MAX_KEPT_TEXT = 200_000
# One entry as the gateway takes it: room for a few texts of MAX_KEPT_TEXT; a bigger one is cut to MAX_TEXT first.
MAX_ENTRY_BYTES = 2 * 1024 * 1024
KEEP_PAUSES = (0.5, 1.0, 2.0)  # a write the gateway did not take is tried again after these
KEEP_SECONDS = 5.0  # each try's connect, write and read
# All tries of one entry: the time counts against the run's own budget, and a run being stopped waits for it.
KEEP_BUDGET_SECONDS = 15.0
SUMMARY_ROWS = 50
# Long enough not to be a common word or number.
_MIN_SECRET = 8

_SENSITIVE_KEY = re.compile(
    r"(?i)^(authorization|proxy-authorization|cookie|set-cookie|x-api-key|api[_-]?key|apikey|token|secret|"
    r"password|passwd|private[_-]?key|.*[_-](token|secret|password|api[_-]?key|secret[_-]access[_-]key|private[_-]key))$"
)
_CREDENTIALS: list[tuple[re.Pattern[str], str]] = [
    # An Authorization header's whole value, whatever its scheme, in text, JSON or repr.
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,}]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {REDACTED}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), REDACTED),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"), REDACTED),
    (re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), REDACTED),
    # npm's own tokens; detect-secrets finds them only in an .npmrc line.
    (re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"), REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"), REDACTED),  # Google API keys, which some SDKs put in URLs
    # A key in a URL's query (?key=..., &key=...), as Google's APIs take it.
    (re.compile(r"(?i)([?&]key=)[^\s\"'&#]+"), rf"\1{REDACTED}"),
    # key=value and "key": "value" for keys that name a credential.
    (
        re.compile(
            r"(?i)((?:api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|auth[_-]?token|token|client[_-]?secret|"
            r"secret[_-]?access[_-]?key|secret|password|passwd)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;}]+"
        ),
        rf"\1{REDACTED}",
    ),
]


class Redactor:
    """Replaces known secrets and anything shaped like a credential with `[redacted]`, in any JSON-like value."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self._fingerprints: list[Fingerprint] = []
        self.add(*secrets)

    def add_fingerprint(self, fingerprint: Fingerprint) -> None:
        """Also redact the secret of this fingerprint, which the run was not given (`flows.fingerprints`)."""
        if fingerprint.length >= _MIN_SECRET:
            self._fingerprints.append(fingerprint)

    def add(self, *secrets: str) -> None:
        """Also redact these exact values (too short ones are ignored: they would redact common words)."""
        known = set(self._secrets) | {secret for secret in secrets if secret and len(secret) >= _MIN_SECRET}
        self._secrets = sorted(known, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            value = value.replace(secret, REDACTED)
        for fingerprint in self._fingerprints:
            value = fingerprint.redact(value, REDACTED)
        value = _without_detected(value)
        for pattern, replacement in _CREDENTIALS:
            value = pattern.sub(replacement, value)
        return value

    def redact(self, value: Any) -> Any:
        """`value` with secrets redacted; dicts and lists are copied, never changed in place."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                key: REDACTED if _sensitive(key, item) else self.redact(item)
                for key, item in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self.redact(item) for item in value]
        return value


@dataclass(frozen=True)
class _Detector:
    pattern: re.Pattern[str]
    plugin: RegexBasedDetector
    checks: bool  # the plugin checks what its pattern found (a JWT's parts must decode): ask it
    key_block: bool  # a private key's first line: the whole key goes


@functools.cache
def _detectors() -> tuple[_Detector, ...]:
    """The regexes of detect-secrets' regex plugins, bar public IP addresses (not credentials) and npm's.

    Imported at first use, once a process (about 0.1 s cold, mostly `requests`, which the plugins import for their
    online checks; none is made here). Its other plugins are left out: the entropy ones take hex ids and UUIDs for
    secrets, and the keyword one reads a source file's assignments (in prose it takes the rest of a line). npm's
    pattern (`//.+/:_authToken=...`) takes time quadratic in a line's length (0.3 s for 10,000 characters of `//`, a
    minified page a tool fetched); the `auth_token=` and `npm_` rules above find what it finds.
    """
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.plugins.ip_public import IPPublicDetector
    from detect_secrets.plugins.npm import NpmDetector
    from detect_secrets.plugins.private_key import PrivateKeyDetector

    classes: list[Any] = sorted(get_mapping_from_secret_type_to_class().values(), key=lambda plugin: plugin.__name__)
    left_out = (IPPublicDetector, NpmDetector)
    found: list[_Detector] = []
    for plugin_class in classes:
        if not issubclass(plugin_class, RegexBasedDetector) or issubclass(plugin_class, left_out):
            continue
        plugin = plugin_class()
        checks = plugin_class.analyze_string is not RegexBasedDetector.analyze_string
        key_block = issubclass(plugin_class, PrivateKeyDetector)
        found.extend(_Detector(pattern, plugin, checks, key_block) for pattern in plugin.denylist)
    return tuple(found)


# A detector may match part of a token (a known prefix and a length, or only the prefix as its group): the whole
# token goes, dots inside it included (a JWT's signature), a sentence's last dot not.
_TOKEN_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_TOKEN_REST = re.compile(r"(?:[A-Za-z0-9_\-+/=]|\.(?=[A-Za-z0-9_-]))*")
# What some detectors match around a token (a space, a quote, `=`): not part of it.
_AROUND = frozenset(" \t\r\n\"'=:")
# A private key ends at its END line, a PuTTY key file at its MAC; without either, at the end of the text.
_KEY_END = re.compile(r"END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)? ?-*|Private-MAC: *[0-9A-Fa-f]+")


def _without_detected(text: str) -> str:
    """`text` with what detect-secrets' detectors find replaced by `[redacted]`."""
    spans = sorted(span for detector in _detectors() for span in _found(detector, text))
    if not spans:
        return text
    parts: list[str] = []
    done = 0
    for start, end in spans:
        if end <= done:
            continue
        if start >= done:
            parts.append(text[done:start])
            parts.append(REDACTED)
        done = end
    parts.append(text[done:])
    return "".join(parts)


def _found(detector: _Detector, text: str) -> Iterable[tuple[int, int]]:
    for match in detector.pattern.finditer(text):
        if detector.key_block:
            start = match.start() - (text[max(0, match.start() - 2) : match.start()] == "- ")  # "---- BEGIN SSH2"
            while start > 0 and text[start - 1] == "-":
                start -= 1
            key_end = _KEY_END.search(text, match.end())
            yield start, key_end.end() if key_end else len(text)
            continue
        # With groups, the pattern names the secret in its context (a URL's password): that much goes.
        spans = [match.span(group) for group in range(1, detector.pattern.groups + 1) if match.group(group)]
        for start, end in spans or [match.span()]:
            while start < end and text[start] in _AROUND:
                start += 1
            while end > start and text[end - 1] in _AROUND:
                end -= 1
            found = text[start:end]
            if not found or (detector.checks and found not in detector.plugin.analyze_string(found)):
                continue
            while start > 0 and text[start - 1] in _TOKEN_START:
                start -= 1
            rest = _TOKEN_REST.match(text, end)
            yield start, rest.end() if rest else end


def _sensitive(key: Any, value: Any) -> bool:
    return isinstance(key, str) and bool(_SENSITIVE_KEY.match(key)) and isinstance(value, (str, int, float))


def shorten(value: Any, limit: int = MAX_TEXT) -> Any:
    """`value` with every text longer than `limit` cut, saying how much was left out."""
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]}… [{len(value) - limit} more characters]"
    if isinstance(value, dict):
        return {key: shorten(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        return [shorten(item, limit) for item in value]
    return value


class TranscriptEntry(BaseModel):
    """One LLM call or tool call of a run, secrets redacted."""

    index: int = Field(description="Position in the run's transcript, from 1.")
    step: int = Field(description="The agent loop's step: LLM call N and the tool calls it asked for share step N.")
    kind: Literal["llm", "tool"] = Field(description="'llm' for a model call, 'tool' for a tool call.")
    name: str = Field(description="'llm', or the name of the tool called.")
    task_run_name: str = Field(
        description="The Prefect task run of this call, as the Prefect UI names it.", examples=["llm · step 1"]
    )
    started_at: datetime = Field(description="When the call started (UTC).")
    duration_ms: int = Field(description="How long the call took, retries included, in milliseconds.")
    input: Any = Field(
        description=(
            "For an LLM call: the messages the model had not seen in an earlier call (the first call sends the "
            "system and user messages, later ones the tool results). For a tool call: its arguments."
        )
    )
    output: Any = Field(
        description=(
            "For an LLM call: the assistant's content and tool_calls. For a tool call: its result. "
            "Null when the call failed."
        )
    )
    whole_output: str | None = Field(
        default=None,
        description=(
            "A tool result the model got cut (past 20,000 characters): the whole of it as the tool answered, up to "
            f"{MAX_KEPT_TEXT:,} characters, secrets redacted; `output` is what the model got. Null when the model got "
            "all of it, unless asked for (get_transcript's `whole`), for a step replayed from the run's journal, and "
            "in a transcript kept as a Prefect artifact table."
        ),
    )
    prompt_tokens: int | None = Field(default=None, description="Prompt tokens of an LLM call; null for tool calls.")
    completion_tokens: int | None = Field(
        default=None, description="Completion tokens of an LLM call; null for tool calls."
    )
    error: str | None = Field(
        default=None, description="Null, or 'ExceptionType: message' when the call failed after its retries."
    )
    server: str | None = Field(
        default=None, description="An MCP tool call: the MCP server's name as the agent names it; null otherwise.",
        examples=["everything"],
    )
    tool: str | None = Field(
        default=None, description="An MCP tool call: the tool's name on its server; null otherwise.", examples=["echo"]
    )
    flags: list[str] | None = Field(
        default=None,
        description=(
            "An MCP tool call whose result looked like prompt injection: what screening found (the model got the "
            "result fenced and marked as data); null when nothing was found."
        ),
        examples=[["\"ignore previous instructions\""]],
    )
    replayed: bool | None = Field(
        default=None,
        description=(
            "True when the call was made before the run was interrupted, and the retried run took its recorded "
            "output from the run's journal instead of making it again; null otherwise."
        ),
    )

    def to_row(self) -> dict[str, Any]:
        """A row of the artifact table: input and output as JSON text, which the Prefect UI shows as is."""
        row = self.model_dump(mode="json", exclude={"whole_output"})  # a table republished at each step: not that
        row["input"] = json.dumps(self.input, ensure_ascii=False)
        row["output"] = json.dumps(self.output, ensure_ascii=False)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Self:
        decoded = dict(row)
        for name in ("input", "output"):
            if isinstance(decoded.get(name), str):
                with suppress(ValueError):  # not JSON: kept as the text it is
                    decoded[name] = json.loads(decoded[name])
        return cls.model_validate(decoded)


class Usage(BaseModel):
    """What one run used."""

    prompt_tokens: int = Field(description="Prompt tokens over all LLM calls.")
    completion_tokens: int = Field(description="Completion tokens over all LLM calls.")
    llm_calls: int = Field(description="LLM calls made, failed ones included.")
    tool_calls: int = Field(description="Tool calls made, failed ones included.")
    cost_usd: float | None = Field(
        description="Cost in US dollars, from litellm's price list; null when the model has no known price."
    )
    duration_seconds: float = Field(description="Wall-clock time of the run until its usage was recorded.")


@dataclass
class Outcome:
    """What the code inside `Recorder.step` fills in once the call returned."""

    output: Any = None
    whole: str | None = None  # a tool's result uncut, when `output` is cut for the model
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    flags: list[str] | None = None
    replayed: bool | None = None  # taken from the run's journal, not made again (`flows.journal`)


def artifact_names(org_slug: str | None, agent_name: str) -> str:
    """The org's and agent's names as a key may hold them (lowercase letters, digits, dashes).

    >>> artifact_names("acme", "Inventory Walker!")
    'acme-inventory-walker'
    """
    text = "-".join(part for part in (org_slug, agent_name) if part)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:MAX_KEY_NAMES].strip("-")


def artifact_key(kind: str, names: str) -> str:
    """The key of a `kind` artifact of one org's agent: the Prefect UI's Artifacts page shows a card per key, so each
    agent of each org gets its own, not one for every run of the install. Tenancy never rests on it: readers find a
    run's artifacts by the run's id.

    >>> artifact_key(USAGE_ARTIFACT_KEY, "acme-inventory-walker")
    'usage-acme-inventory-walker'
    """
    return f"{kind}-{names}" if names else kind


def is_kind(key: str | None, kind: str) -> bool:
    """Whether an artifact's key is of `kind`: its own (`artifact_key`), or the bare kind runs published before.

    No kind is another's prefix followed by a dash, so the names after it cannot make one kind read as another.

    >>> is_kind("usage-acme-x", USAGE_ARTIFACT_KEY), is_kind("usage", USAGE_ARTIFACT_KEY)
    (True, True)
    >>> is_kind("transcript-acme-usage", USAGE_ARTIFACT_KEY)
    False
    """
    return key is not None and (key == kind or key.startswith(f"{kind}-"))


class Recorder:
    """Records a run's transcript and usage: entries kept through `keeper`, else published as artifacts; one per run.

    `keeper`: Ariel's gateway for this run (`TranscriptKeeper.for_this_run()`); None publishes tables as before.
    """

    def __init__(self, model: str, redactor: Redactor | None = None, keeper: TranscriptKeeper | None = None,
                 names: str = "") -> None:
        self.model = model
        self.names = names  # the org's and agent's, in its artifacts' keys (`artifact_names`)
        self.redactor = redactor or Redactor()
        self.entries: list[TranscriptEntry] = []
        self.keeper = keeper
        self._started = time.monotonic()
        # Each model answer's price (None: unpriced), as its call reported it; None once one did not say (a step
        # replayed from an older run's journal): the run's cost is then priced from its tokens here.
        self._call_costs: list[float | None] | None = []

    def priced(self, turn: dict[str, Any]) -> None:
        """Count a model answer's price: `turn` as `flows.models.complete` (or the gateway) gave it."""
        if self._call_costs is None:
            return
        if "cost_usd" not in turn:
            self._call_costs = None
            return
        cost = turn["cost_usd"]
        self._call_costs.append(float(cost) if isinstance(cost, int | float) else None)

    @asynccontextmanager
    async def step(
        self, kind: Literal["llm", "tool"], name: str, step: int, task_run_name: str, input: Any,
        server: str | None = None, tool: str | None = None,
    ) -> AsyncIterator[Outcome]:
        """Record the call made inside the block, also when it raises (then with its error), and publish.

        `server` and `tool`: an MCP tool call's server and tool.
        """
        outcome = Outcome()
        started_at = datetime.now(UTC)
        started = time.monotonic()
        error: str | None = None
        try:
            yield outcome
        except BaseException as exc:
            error = describe(exc)
            raise
        finally:
            self.entries.append(
                TranscriptEntry(
                    index=len(self.entries) + 1,
                    step=step,
                    kind=kind,
                    name=name,
                    task_run_name=task_run_name,
                    started_at=started_at,
                    duration_ms=round((time.monotonic() - started) * 1000),
                    input=self._clean(input, self._text_limit),
                    output=self._clean(outcome.output, self._text_limit),
                    # Only where Ariel keeps entries one by one: a table republished whole at each step cannot.
                    # The tool made it as long as the transcript keeps; a cut here would break an answer's JSON.
                    whole_output=self.redactor.redact(outcome.whole)
                    if outcome.whole is not None and self.keeper is not None else None,
                    prompt_tokens=outcome.prompt_tokens,
                    completion_tokens=outcome.completion_tokens,
                    error=self.redactor.text(error) if error else None,
                    server=server,
                    tool=tool,
                    flags=outcome.flags,
                    replayed=outcome.replayed,
                )
            )
            await self._record(self.entries[-1])

    def usage(self) -> Usage:
        llm = [entry for entry in self.entries if entry.kind == "llm"]
        prompt = sum(entry.prompt_tokens or 0 for entry in llm)
        completion = sum(entry.completion_tokens or 0 for entry in llm)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            llm_calls=len(llm),
            tool_calls=len(self.entries) - len(llm),
            cost_usd=self._cost(prompt, completion),
            duration_seconds=round(time.monotonic() - self._started, 3),
        )

    def _cost(self, prompt: int, completion: int) -> float | None:
        costs = self._call_costs
        if costs is None:
            from flows.models import price  # litellm's price list: imported only for a run that calls it itself

            return price(self.model, prompt, completion)
        return None if None in costs else round(sum(cost for cost in costs if cost is not None), 8)

    async def publish_usage(self) -> Usage:
        """Publish what the run used, and the transcript's summary when Ariel keeps the transcript itself."""
        usage = self.usage()
        await self._publish(
            USAGE_ARTIFACT_KEY, [usage.model_dump(mode="json")], "Tokens, calls, cost and duration of this run."
        )
        if self.keeper is not None and self.keeper.link is not None:
            await self._publish_markdown(TRANSCRIPT_ARTIFACT_KEY, summary(self.entries, usage, self.keeper.link),
                                         "What this run called, in order; Ariel keeps the whole transcript.")
        return usage

    @property
    def _text_limit(self) -> int:
        return MAX_KEPT_TEXT if self.keeper is not None else MAX_TEXT

    def _clean(self, value: Any, limit: int = MAX_TEXT) -> Any:
        # Through JSON first: what the artifact can hold, whatever objects a provider's message carried.
        return shorten(self.redactor.redact(json.loads(json.dumps(value, default=str))), limit)

    async def _record(self, entry: TranscriptEntry) -> None:
        if self.keeper is not None:
            if len(entry.model_dump_json().encode()) > MAX_ENTRY_BYTES:  # the whole result goes first
                entry = entry.model_copy(update={"whole_output": None})
            if len(entry.model_dump_json().encode()) > MAX_ENTRY_BYTES:  # then its texts are cut as a table does
                entry = entry.model_copy(update={"input": shorten(entry.input), "output": shorten(entry.output)})
            kept = await self.keeper.keep(entry)
            if kept != "no_route":
                return
            # A gateway that keeps no transcripts (an older control plane): tables, as before, from now on.
            self.keeper = None
        await self._publish(
            TRANSCRIPT_ARTIFACT_KEY,
            [e.model_copy(update={"input": shorten(e.input), "output": shorten(e.output)}).to_row()
             for e in self.entries],
            f"LLM and tool calls of this run, in order, secrets redacted ({len(self.entries)} so far).",
        )

    async def _publish(self, key: str, table: list[dict[str, Any]], description: str) -> None:
        await publish_artifact(artifact_key(key, self.names), "table", table, description)

    async def _publish_markdown(self, key: str, markdown: str, description: str) -> None:
        await publish_artifact(artifact_key(key, self.names), "markdown", markdown, description)


async def publish_artifact(key: str, kind: Literal["markdown", "table"], data: Any, description: str) -> None:
    """Create the run's artifact `key` in Prefect (nothing outside a run); a warning in the run's log when Prefect
    did not take it: a record is worth less than the run it records."""
    from flows.engine.context import current_run_or_none
    from flows.engine.logs import run_logger

    run = current_run_or_none()
    if run is None:
        return
    try:
        # Bounded: this may run while the run is being stopped, and must not keep it alive.
        await asyncio.wait_for(run.api.create_artifact(key, kind, data, description), 30)
    except Exception as exc:  # noqa: BLE001 - see above
        run_logger().warning("Could not publish the %s artifact: %s: %s", key, type(exc).__name__, exc)


@dataclass
class TranscriptKeeper:
    """Sends each entry of this run's transcript to Ariel's gateway, which keeps it sealed (one per run)."""

    url: str
    token: str = field(repr=False)
    link: str | None = None  # where the whole transcript is read, once the gateway kept an entry
    lost: int = 0  # entries not kept: after the first, each entry is tried once, so a bucket down slows no step

    @classmethod
    def for_this_run(cls) -> TranscriptKeeper | None:
        """The keeper of a run that reached Ariel's gateway; None for one without (no run token)."""
        from flows.credentials import gateway_url, run_token

        url, token = gateway_url(TRANSCRIPT_ROUTE), run_token()
        return cls(url, token) if url is not None and token is not None else None

    async def keep(self, entry: TranscriptEntry) -> Literal["kept", "no_route", "lost"]:
        """Send `entry`, trying again a few times (once, after an entry was lost); "lost" (and a warning in the
        run's log) when it was not taken."""
        from flows.engine.logs import run_logger

        body = entry.model_dump_json().encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        problem = "it took longer than the run waits for an entry"
        try:
            async with asyncio.timeout(KEEP_BUDGET_SECONDS):
                kept, problem = await self._send(body, headers)
        except TimeoutError:
            kept = None
        if kept is not None:
            return kept
        self.lost += 1
        run_logger().warning("Transcript entry %d (%s, step %d) was not kept: %s", entry.index, entry.name,
                                 entry.step, problem)
        return "lost"

    async def _send(self, body: bytes,
                    headers: dict[str, str]) -> tuple[Literal["kept", "no_route"] | None, str]:
        import httpx

        from flows.tls import tls_for

        problem = ""
        for pause in (*(KEEP_PAUSES if not self.lost else ()), None):
            try:
                async with httpx.AsyncClient(timeout=KEEP_SECONDS, trust_env=False,
                                             verify=tls_for(self.url)) as client:
                    answer = await client.post(self.url, content=body, headers=headers)
                if answer.status_code == 200:
                    self.link = str(answer.json().get("link") or "") or None
                    return "kept", ""
                if answer.status_code in (403, 404) and self.link is None:
                    return "no_route", ""  # a control plane that keeps no transcripts, or predates them
                problem = _answer_detail(answer)
                if answer.status_code < 500:
                    break  # refused: trying again will not change that
            except (httpx.HTTPError, ValueError) as exc:
                problem = f"Ariel's gateway did not answer ({type(exc).__name__})"
            if pause is not None:
                await asyncio.sleep(pause)
        return None, problem


def _answer_detail(answer: Any) -> str:
    try:
        found = answer.json()
    except ValueError:
        found = None
    detail = found.get("detail") if isinstance(found, dict) else None
    return str(detail or f"status {answer.status_code}")


def summary(entries: list[TranscriptEntry], usage: Usage, link: str) -> str:
    """The transcript's summary artifact: each call's step, name, time and error, no content; and the link."""
    cost = f" · ${usage.cost_usd:.4f}" if usage.cost_usd is not None else ""
    lines = [
        f"**{len(entries)} call{'s' if len(entries) != 1 else ''}** ({usage.llm_calls} LLM, {usage.tool_calls} tool) · "
        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens{cost} · "
        f"{usage.duration_seconds:.1f} s",
        "",
        f"The whole transcript, every message and result with secrets redacted, is kept by Ariel: [read it]({link}) "
        "with your Ariel key (`Authorization: Bearer …`), or ask in chat: *get_transcript* of this run.",
        "",
        "| # | step | call | took | error |",
        "| --- | --- | --- | --- | --- |",
    ]
    for entry in entries[:SUMMARY_ROWS]:
        error = (entry.error or "").replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(f"| {entry.index} | {entry.step} | {entry.task_run_name} | {entry.duration_ms} ms | {error} |")
    if len(entries) > SUMMARY_ROWS:
        lines.append(f"| … | | {len(entries) - SUMMARY_ROWS} more calls: read the whole transcript | | |")
    return "\n".join(lines)


def describe(error: BaseException) -> str:
    """'ExceptionType: message', as a transcript entry's error."""
    if isinstance(error, asyncio.CancelledError):
        return "CancelledError: the call was stopped before it finished (the run ran out of time or was cancelled)"
    if isinstance(error, ModelCallFailed):
        return str(error)  # named for the provider's error, as when the run makes the call itself
    message = str(error).strip()
    return f"{type(error).__name__}: {message}" if message else type(error).__name__

