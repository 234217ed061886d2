"""A job's input rows, whatever its task: JSON lines and decoded records -> the rows its engine runs, or error rows.

A job that generates reads `PromptRow`s (jobs/rows.py), one that embeds `EmbedRow`s (jobs/embeddings.py); the
planner and the shard reader go through here, so both validate a row the same way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tide.engine.embeddings import EMBED_TASK, GENERATE_TASK
from tide.jobs.embeddings import EmbedRow, parse_embedding_row
from tide.jobs.endpoints import EMBEDDINGS_URL, GENERATION_ENDPOINTS
from tide.jobs.readers import MAX_LINE_BYTES, JsonlLine
from tide.jobs.rows import ErrorRow, PromptRow, decode_line, parse_row, row_error
from tide.jobs.specs import JobSpec
from tide.jobs.storage import Location, StorageError

InputRow = PromptRow | EmbedRow


def parse_jsonl(line: JsonlLine, spec: JobSpec) -> InputRow | ErrorRow:
    """One row of a JSONL input of `spec`, as the planner and the shard that runs it both read it."""
    if line.too_long:
        return row_error(line.row, None, "line_too_long", f"the line is longer than {MAX_LINE_BYTES} bytes")
    raw = decode_line(line.data, line.row)
    return raw if isinstance(raw, ErrorRow) else parse_record(raw, line.row, spec)


def parse_record(raw: Any, row: int, spec: JobSpec) -> InputRow | ErrorRow:
    """A decoded row (a JSON value, or a Parquet row mapped through the job's columns) of `spec`'s input."""
    if spec.task == EMBED_TASK:
        return parse_embedding_row(raw, row, spec.endpoint, spec.line_models())
    return parse_row(raw, row, spec.sampling, spec.endpoint, spec.line_models())


@dataclass(frozen=True)
class InputHints:
    """What an OpenAI batch file's first line says about its job, for commands that were not told."""

    model: str | None = None  # `body.model`
    task: str | None = None  # embed for /v1/embeddings, generate for the completion endpoints


def input_hints(location: Location, max_bytes: int = 2**20) -> InputHints:
    """The hints of the input's first line; none for Parquet, an unreadable file or a line that is not a batch
    line (the planner reports those properly)."""
    try:
        with location.open_read() as f:
            first = json.loads(f.readline(max_bytes))
    except (StorageError, OSError, ValueError):
        return InputHints()
    if not isinstance(first, dict) or not isinstance(first.get("body"), dict):
        return InputHints()
    model = first["body"].get("model")
    url = first.get("url")
    task = EMBED_TASK if url == EMBEDDINGS_URL else GENERATE_TASK if url in GENERATION_ENDPOINTS else None
    return InputHints(model if isinstance(model, str) and model else None, task)
