"""Parquet parts: one results part and (when a shard has bad rows) one errors part per shard, at deterministic keys
written through a temporary name and committed, so a re-run shard overwrites its part instead of duplicating it."""
from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tide.jobs.rows import ErrorRow
from tide.jobs.storage import Location

# A token as logprobs show it: its id, its text (bytes that end inside a character are shown escaped) and its bytes.
_TOKEN = [("token_id", pa.int32()), ("logprob", pa.float32()), ("token", pa.string()), ("bytes", pa.list_(pa.uint8()))]
_TOKEN_LOGPROBS = pa.list_(pa.struct([*_TOKEN, ("top", pa.list_(pa.struct(_TOKEN)))]))
RESULT_SCHEMA = pa.schema([
    ("custom_id", pa.string()),
    ("row_index", pa.int64()),
    ("sample_index", pa.int16()),
    ("text", pa.string()),
    ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("cached_prompt_tokens", pa.int32()),
    ("ttft_s", pa.float64()),
    ("latency_s", pa.float64()),
    ("tpot_s", pa.float64()),
    ("logprobs", _TOKEN_LOGPROBS),
    ("prompt_logprobs", _TOKEN_LOGPROBS),  # null entries: prompt tokens not scored (the first, those before the start)
    ("finished_at", pa.float64()),  # unix time the request finished
    ("system_fingerprint", pa.string()),  # the engine that ran it: model, dtype, quantization, Tide version
    ("echo", pa.string()),  # request fields an OpenAI response carries back (JSON), for /v1/responses lines
])
ERROR_SCHEMA = pa.schema([
    ("line", pa.int64()),
    ("row_index", pa.int64()),
    ("custom_id", pa.string()),
    ("code", pa.string()),
    ("message", pa.string()),
    ("param", pa.string()),
])


@dataclass(slots=True)  # made once per finished sample: slots without frozen's per-field setattr cost a third
class ResultRow:
    custom_id: str
    row_index: int
    sample_index: int
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    ttft_s: float | None
    latency_s: float | None
    tpot_s: float | None
    logprobs: list[dict] | None
    prompt_logprobs: list[dict | None] | None = None  # the row's prompt_logprobs, on its first sample
    finished_at: float | None = None
    system_fingerprint: str | None = None
    echo: str | None = None


def part_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def errors_name(shard: int) -> str:
    return f"errors-{shard:05d}.parquet"


def write_results(prefix: Location, shard: int, rows: Iterable[ResultRow]) -> None:
    """Commit the shard's results part, sorted by row so parts read back in input order."""
    ordered = sorted(rows, key=attrgetter("row_index", "sample_index"))
    columns = {name: list(map(attrgetter(name), ordered)) for name in RESULT_SCHEMA.names}
    _commit(prefix.child(part_name(shard)), pa.table(columns, schema=RESULT_SCHEMA))


def write_errors(prefix: Location, shard: int, errors: Iterable[ErrorRow]) -> None:
    """Commit the shard's errors part, or remove a stale one when the shard has no bad rows."""
    ordered = sorted(errors, key=lambda e: e.row)
    target = prefix.child(errors_name(shard))
    if not ordered:
        if target.exists():
            target.delete()
        return
    columns = {"line": [e.line for e in ordered], "row_index": [e.row for e in ordered],
               "custom_id": [e.custom_id for e in ordered], "code": [e.code for e in ordered],
               "message": [e.message for e in ordered], "param": [e.param for e in ordered]}
    _commit(target, pa.table(columns, schema=ERROR_SCHEMA))


def _commit(target: Location, table: pa.Table) -> None:
    with tempfile.TemporaryDirectory(prefix="tide-part-") as tmp:
        path = Path(tmp) / "part.parquet"
        pq.write_table(table, path, compression="zstd")
        target.commit_file(path)
