"""What a run published as artifacts: its reply, its transcript and its usage."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.client.schemas.objects import Artifact
from prefect.client.schemas.sorting import ArtifactSort
from pydantic import BaseModel, Field

from deployments.exceptions import QueryInvalid
from deployments.runs.cursors import BAD_CURSOR, PAGE_LIMIT, decode_cursor, encode_cursor, fingerprint
from flows.transcript import (
    RESULT_ARTIFACT_KEY,
    TRANSCRIPT_ARTIFACT_KEY,
    USAGE_ARTIFACT_KEY,
    TranscriptEntry,
    Usage,
    is_kind,
)


class TranscriptPage(BaseModel):
    """A page of a run's transcript: its LLM and tool calls in order, secrets redacted."""

    entries: list[TranscriptEntry] = Field(description="The entries, in the order the run made the calls.")
    next_cursor: str | None = Field(description="Pass as `cursor` to read the next page; null at the end.")
    total: int = Field(description="Entries in the whole transcript so far; 0 when the run recorded none.")


async def read_result(client: PrefectClient, run_id: UUID) -> str | None:
    """The agent's reply, from the run's result artifact; None before it replied."""
    artifact = await _newest_artifact(client, run_id, RESULT_ARTIFACT_KEY)
    return str(artifact.data) if artifact is not None else None


async def read_transcript(
    client: PrefectClient, run_id: UUID, *, cursor: str | None = None, limit: int = 50
) -> TranscriptPage:
    """A page of the run's transcript, from the newest `transcript` artifact it published; empty when none.

    Runs that reach Ariel's gateway keep theirs whole in the object store instead
    (`mcp_server.services.transcripts`); their `transcript` artifact is a summary, not a table.
    """
    offset = transcript_offset(str(run_id), cursor, limit)
    artifact = await _newest_artifact(client, run_id, TRANSCRIPT_ARTIFACT_KEY)
    rows = table_rows(artifact)
    entries = [TranscriptEntry.from_row(row) for row in rows[offset : offset + limit]]
    return TranscriptPage(
        entries=entries, next_cursor=transcript_cursor(str(run_id), offset + len(entries), len(rows)), total=len(rows)
    )


def transcript_offset(run_id: str, cursor: str | None, limit: int) -> int:
    """Where a page of the run's transcript starts; `QueryInvalid` for a bad limit, or a cursor of another query."""
    if limit < 1:
        raise QueryInvalid(f"limit must be at least 1, not {limit}")
    offset = decode_cursor(cursor, fingerprint("transcript", run_id)).get("offset") if cursor else 0
    if not isinstance(offset, int) or offset < 0:
        raise QueryInvalid(BAD_CURSOR)
    return offset


def transcript_cursor(run_id: str, end: int, total: int) -> str | None:
    """The cursor of the page after one that ended at `end`; None at the transcript's end."""
    return encode_cursor(fingerprint("transcript", run_id), offset=end) if end < total else None


async def read_usage(client: PrefectClient, run_id: UUID) -> Usage | None:
    """What the run used, from the newest `usage` artifact; None before the run ended (or when it recorded none)."""
    rows = table_rows(await _newest_artifact(client, run_id, USAGE_ARTIFACT_KEY))
    return Usage.model_validate(rows[0]) if rows else None


async def _newest_artifact(client: PrefectClient, run_id: UUID, kind: str) -> Artifact | None:
    """The run's newest artifact of `kind` (each publication is a new version; the newest holds everything)."""
    # Keys name the run's org and agent after the kind (`flows.transcript.artifact_key`): Prefect matches a part of
    # the key, and the kind is checked here.
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                                       key=ArtifactFilterKey(like_=kind)),
        sort=ArtifactSort.CREATED_DESC,
        limit=PAGE_LIMIT,
    )
    return next((artifact for artifact in artifacts if is_kind(artifact.key, kind)), None)


def table_rows(artifact: Artifact | None) -> list[dict[str, Any]]:
    """The rows of a table artifact; none for a missing or markdown one."""
    if artifact is None or artifact.data is None:
        return []
    try:
        data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    except ValueError:  # a markdown summary (a transcript kept in the object store), not a table
        return []
    return [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []
