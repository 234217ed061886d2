"""The error rows a shard makes once its rows were read: what happened to a row that has no result."""
from __future__ import annotations

from tide.jobs.inputs import InputRow
from tide.jobs.rows import ErrorRow, row_error


def refused(row: InputRow, reason: str) -> ErrorRow:
    """The engine would not take the row (a request it cannot serve)."""
    return row_error(row.row, row.custom_id, "invalid_request", reason)


def failed(row: InputRow, code: str | None, reason: str) -> ErrorRow:
    """The engine took the row but ended it with an error (a prompt longer than the context, say)."""
    return row_error(row.row, row.custom_id, code or "context_length_exceeded", reason)


def set_aside(rows: list[InputRow], errors: list[ErrorRow],
              poisoned: list[int]) -> tuple[list[InputRow], list[ErrorRow]]:
    """Rows that were alone in the engine when a worker died (twice, counting the first crash) fail; the rest run."""
    if not poisoned:
        return rows, errors
    marked = set(poisoned)
    errors = errors + [row_error(r.row, r.custom_id, "worker_crashed", "the worker process died while running this "
                                 "row; it was set aside so the rest could finish") for r in rows if r.row in marked]
    return [r for r in rows if r.row not in marked], errors


def expired(rows: list[InputRow]) -> list[ErrorRow]:
    return [row_error(r.row, r.custom_id, "batch_expired", "the job's completion window ended before this row ran")
            for r in rows]


def exhausted(rows: list[InputRow], reason: str) -> list[ErrorRow]:
    return [row_error(r.row, r.custom_id, "attempts_exhausted", reason) for r in rows]
