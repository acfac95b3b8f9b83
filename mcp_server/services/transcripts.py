"""Run transcripts kept whole in the object store, one sealed object per LLM or tool call.

A run sends each entry as it records it (`flows.transcript.Recorder`), through
Ariel's gateway with its run token (`mcp_server.gateway.transcript`); nothing
in the request can name another run or org. Each entry becomes one object:

    orgs/<org id>/runs/<run id>/transcript/<generation>-<run count>/<index>     (AES-256-GCM, the org's data key)

so that writing step N costs one entry, not the whole transcript again (a
Prefect artifact republished at every step grew quadratically, and had to cut
long texts short), and a run that crashes keeps every step it recorded. The
seal binds each object to its org, run, attempt and index: an object copied
to another key, or another org's prefix, does not open. A retried run
(`deployments.runs.recovery`) records under its own attempt; readers see the
newest attempt, which replays the earlier one's finished steps.

Example (what the gateway and the tools do)::

    transcripts = RunTranscripts(objects, sealer, link_base="https://ariel.example.com")
    await transcripts.append(org_id, run_id, attempt=1, entry={"index": 1, "kind": "llm", ...})
    entries, total = await transcripts.read(org_id, run_id, offset=0, limit=50)
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError

from blocks.object_store import ObjectStore, ObjectStoreError
from flows.transcript import TranscriptEntry
from mcp_server.services.exceptions import InvalidRequest, SealingError, Unavailable
from mcp_server.services.sealing import Sealed, Sealer

MAX_ENTRIES = 1000  # of one attempt: as many steps as a run's journal holds (`mcp_server.services.journal`)
MAX_PAGE_BYTES = 8 * 1024 * 1024  # of one page read: a reader pages on rather than hold a whole long run at once
LINK_PATH = "/v1/runs/{run_id}/transcript"  # the HTTP app's; what a transcript's summary artifact links to
_MAGIC = b"ariel-sealed-1\n"  # then the data key's version (4 bytes), the nonce (12) and the ciphertext
_HEADER = struct.Struct(">I12s")
_READS_AT_ONCE = 16
T = TypeVar("T")

log = logging.getLogger("ariel.transcripts")


@dataclass(frozen=True)
class TranscriptIndex:
    """The run's newest attempt (`<generation>-<run count>`, "" when none) and its entries' keys, in order."""

    attempt: str
    keys: list[str]


@dataclass(frozen=True)
class RunTranscripts:
    objects: ObjectStore
    sealer: Sealer
    link_base: str  # the app's public address

    def link(self, run_id: str) -> str:
        """Where a person signed in to Ariel reads the whole transcript (the Prefect UI's summary links here)."""
        return self.link_base.rstrip("/") + LINK_PATH.format(run_id=run_id)

    async def append(self, org_id: str, run_id: str, attempt: tuple[int, int], entry: dict[str, Any]) -> None:
        """Keep one entry of the run's transcript, sealed; the same index again replaces it.

        `attempt`: the run token's generation and Prefect run count, which tell every attempt apart (Ariel's
        recovery raises the first, a retry by other means the second).
        """
        try:
            checked = TranscriptEntry.model_validate(entry)
        except ValidationError as exc:
            raise InvalidRequest(f"a transcript entry is one LLM or tool call as flows.transcript records it: "
                                 f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        if not 1 <= checked.index <= MAX_ENTRIES:
            raise InvalidRequest(f"a transcript holds at most {MAX_ENTRIES} entries, numbered from 1; not "
                                 f"{checked.index}")
        key = _key(org_id, run_id, attempt, checked.index)
        sealed = await self.sealer.seal(org_id, _purpose(key), checked.model_dump_json().encode())
        await self._objects("keep", self.objects.put(key, _pack(sealed)))

    async def index(self, org_id: str, run_id: str) -> TranscriptIndex:
        """The keys of the run's newest attempt (a retried run's transcript is its newest attempt's)."""
        keys = await self._objects("list", self.objects.keys(_prefix(org_id, run_id)))
        newest = max((key.rsplit("/", 2)[-2] for key in keys), default="")
        return TranscriptIndex(newest, [key for key in keys if key.rsplit("/", 2)[-2] == newest])

    async def page(self, org_id: str, index: TranscriptIndex, offset: int,
                   limit: int) -> tuple[list[TranscriptEntry], int]:
        """Entries `offset` to `offset + limit` of `index`, fewer when they pass MAX_PAGE_BYTES, and how many of
        `index` were read (the next page goes on from `offset` plus that). An entry that does not open (altered, or
        not Ariel's) is left out, and logged."""
        keys = index.keys[offset : offset + limit]
        opener = self.sealer.opener(org_id)  # the org's data key unwrapped once for the page, not per entry

        async def opened(key: str) -> tuple[int, TranscriptEntry | None]:
            packed = await self._objects("read", self.objects.get(key))
            if packed is None:  # deleted between the listing and now
                return 0, None
            try:
                plain = await opener(_purpose(key), _unpack(packed))
                return len(plain), TranscriptEntry.model_validate_json(plain)
            except (SealingError, ValidationError, ValueError) as exc:
                log.warning("transcripts: the object %s does not open as an entry: %s", key, type(exc).__name__)
                return 0, None

        entries: list[TranscriptEntry] = []
        size = read = 0
        # A batch at a time, in order: entries may be a megabyte each, and a page stops at MAX_PAGE_BYTES.
        for start in range(0, len(keys), _READS_AT_ONCE):
            for length, entry in await asyncio.gather(*(opened(key) for key in keys[start : start + _READS_AT_ONCE])):
                size += length
                if entries and size > MAX_PAGE_BYTES:
                    return entries, read
                read += 1
                if entry is not None:
                    entries.append(entry)
        return entries, read

    async def read(self, org_id: str, run_id: str, offset: int, limit: int) -> tuple[list[TranscriptEntry], int]:
        """A page of the run's newest attempt, and how many entries it recorded in all."""
        index = await self.index(org_id, run_id)
        return (await self.page(org_id, index, offset, limit))[0], len(index.keys)

    async def delete(self, org_id: str, run_id: str) -> int:
        """Remove the run's transcript, every attempt's; how many entries went."""
        return await self._objects("delete", self.objects.remove(_prefix(org_id, run_id)))

    async def forget_older_than(self, retention: timedelta, org_ids: Iterable[str]) -> int:
        """Delete the transcripts of the orgs' runs that recorded nothing for `retention`; how many entries went.

        A transcript goes whole (every attempt's), by its newest entry: never a run's first steps while it records
        its last; and only the entries listed as old (one written since stays). Org by org, under each org's own
        prefix: another install's objects in a shared bucket are never listed. The run itself stays in Prefect;
        `get_transcript` then says it has no transcript.
        """
        before = datetime.now(UTC) - retention
        forgotten = 0
        for org_id in org_ids:
            keys_of: dict[str, list[str]] = {}
            newest: dict[str, datetime] = {}
            for key, written in (await self.objects.stamps(f"orgs/{_part(org_id)}/runs/")).items():
                parts = key.split("/")
                if len(parts) > 5 and parts[4] == "transcript":
                    run = "/".join(parts[:4]) + "/"  # the run's folder, left empty, goes too
                    keys_of.setdefault(run, []).append(key)
                    newest[run] = max(written, newest.get(run, written))
            for run, keys in keys_of.items():
                if newest[run] < before:
                    try:
                        forgotten += await self.objects.remove_keys(keys, run)
                    except ValueError as exc:  # an object put there by other means, under no key of Ariel's
                        log.warning("transcripts: the old transcript under %s was not deleted: %s", run, exc)
        return forgotten

    async def delete_org(self, org_id: str) -> int:
        """Remove every object of the org (its runs' transcripts, and whatever else is kept under it)."""
        try:
            return await self.objects.remove(f"orgs/{_part(org_id)}/")
        except ObjectStoreError as exc:
            log.warning("transcripts: could not delete an org's objects: %s", exc)
            raise Unavailable("could not delete the org's objects: the object store did not answer, so nothing of "
                              "the org was deleted (it stays suspended until the deletion is done); try again (the "
                              "log says why)") from None

    @staticmethod
    async def _objects(doing: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except ObjectStoreError as exc:
            # The operator's log says which store and why; a person in chat learns what they can do.
            log.warning("transcripts: could not %s a run's transcript: %s", doing, exc)
            raise Unavailable(f"could not {doing} the run's transcript: the object store did not answer; try again, "
                              "and if it goes on, tell the install's operator (the app's log says why)") from None


def _prefix(org_id: str, run_id: str) -> str:
    return f"orgs/{_part(org_id)}/runs/{_part(run_id)}/transcript/"


def _key(org_id: str, run_id: str, attempt: tuple[int, int], index: int) -> str:
    generation, run_count = attempt
    return f"{_prefix(org_id, run_id)}{generation:04d}-{run_count:04d}/{index:06d}"


def _part(value: str) -> str:
    # Ids are hex and UUIDs; anything else is a bug upstream, not a path to follow.
    if not value or not all(char.isascii() and (char.isalnum() or char == "-") for char in value):
        raise InvalidRequest(f"not an id: {value[:40]!r}")
    return value


def _purpose(key: str) -> str:
    """What the seal binds an object to: its key, which names its org, run, attempt and index."""
    return f"object:{key}"


def _pack(sealed: Sealed) -> bytes:
    return _MAGIC + _HEADER.pack(sealed.dek_version, sealed.nonce) + sealed.ciphertext


def _unpack(packed: bytes) -> Sealed:
    if not packed.startswith(_MAGIC) or len(packed) < len(_MAGIC) + _HEADER.size:
        # A ValueError: the page leaves the entry out and logs it, as one whose seal does not open.
        raise ValueError("a transcript object is not one Ariel sealed: the object store holds something else at its "
                         "key")
    version, nonce = _HEADER.unpack_from(packed, len(_MAGIC))
    return Sealed(packed[len(_MAGIC) + _HEADER.size :], nonce, version)
