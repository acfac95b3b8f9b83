"""Runs of agents, read and started through the Prefect API, always scoped to one org's tag.

`flow_runs` starts, finds and lists runs; `logs` pages through their log
lines; `artifacts` reads what the runtime published (reply, transcript,
usage); `diagnosis` explains a failed run; `cursors` binds page cursors to
their query.
"""

from deployments.runs.artifacts import (
    TranscriptPage,
    read_result,
    read_transcript,
    read_usage,
    transcript_cursor,
    transcript_offset,
)
from deployments.runs.cursors import PAGE_LIMIT
from deployments.runs.flow_runs import (
    RunSummary,
    failed_task_runs,
    find_run,
    list_runs,
    start_run,
    upcoming_runs,
    wait_for_run,
)
from deployments.runs.logs import LOG_LEVELS, LogLine, LogPage, StepNames, read_log_page
from flows.transcript import TranscriptEntry, Usage

__all__ = [
    "LOG_LEVELS", "PAGE_LIMIT", "LogLine", "LogPage", "RunSummary", "StepNames", "TranscriptEntry", "TranscriptPage",
    "Usage", "failed_task_runs", "find_run", "list_runs", "read_log_page", "read_result",
    "read_transcript", "read_usage", "start_run", "transcript_cursor", "transcript_offset", "upcoming_runs",
    "wait_for_run",
]
