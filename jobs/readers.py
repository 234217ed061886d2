"""Stream rows out of an input file: JSONL by byte range, Parquet by the row groups covering a row range.

Nothing is read whole: JSONL is consumed line by line through a buffered (ranged, for S3) stream, Parquet a record
batch at a time. Every reader yields `(row_index, raw)` where raw is the line's bytes (JSONL) or a dict (Parquet).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

from tide.jobs.specs import ColumnMap
from tide.jobs.storage import Location, StorageError

Format = Literal["jsonl", "parquet"]
PARQUET_BATCH_ROWS = 1024
# The longest JSONL line read: one longer is an error row (read past, never held), so a file of one 200 MB line
# cannot make a planner or worker hold it whole.
MAX_LINE_BYTES = 16 * 2**20


class JsonlLine(NamedTuple):  # a tuple: made once per input line, where a frozen dataclass costs 3x as much
    row: int
    start: int  # byte offset of the line
    end: int  # byte offset just past its newline
    data: bytes | None  # None for a blank line (not a row, but it keeps line numbers) or one too long
    too_long: bool = False  # longer than MAX_LINE_BYTES: a row, whose data was skipped

    @property
    def is_row(self) -> bool:
        return self.data is not None or self.too_long


def detect_format(location: Location, declared: str) -> Format:
    """The declared format, else the file extension, else the Parquet magic bytes."""
    if declared != "auto":
        return declared  # type: ignore[return-value]
    name = location.uri.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    with location.open_read() as f:
        return "parquet" if f.read(4) == b"PAR1" else "jsonl"


def iter_jsonl_lines(location: Location, start: int = 0, end: int | None = None, first_row: int = 0,
                     max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[JsonlLine]:
    """Lines starting in [start, end), numbered from `first_row`; `start` must be a line start."""
    with location.open_read() as f:
        f.seek(start)
        pos, row = start, first_row
        while end is None or pos < end:
            line = f.readline(max_line_bytes + 1)
            if not line:
                return
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                length = len(line) + _skip_line(f)
                yield JsonlLine(row, pos, pos + length, None, too_long=True)
            else:
                length = len(line)
                yield JsonlLine(row, pos, pos + length, line.strip() or None)
            pos += length
            row += 1


def _skip_line(f, chunk: int = 2**20) -> int:
    """Read past the rest of a line; the bytes skipped, its newline included."""
    skipped = 0
    while True:
        part = f.readline(chunk)
        skipped += len(part)
        if not part or part.endswith(b"\n"):
            return skipped


def parquet_columns(location: Location, columns: ColumnMap, task: str) -> list[str]:
    """The mapped columns this file has; fails naming the text columns a job of `task` reads when it has none."""
    import pyarrow.parquet as pq

    with location.open_read() as f:
        names = set(pq.ParquetFile(f).schema_arrow.names)
    fields = columns.fields(task)
    if not any(c in names for c, field in fields.items() if field != "id"):
        wanted = " or ".join(repr(c) for c, field in fields.items() if field != "id")
        raise StorageError(f"{location.uri} has no {wanted} column (columns: {', '.join(sorted(names))}); map them "
                           "with the job's `columns`")
    return [c for c in fields if c in names]


def iter_parquet_rows(location: Location, columns: ColumnMap, task: str, start: int = 0,
                      end: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows [start, end) as plain-row dicts (`prompt` / `messages` / `id`, or `input` / `id` for a job that embeds),
    reading only the covering row groups."""
    import pyarrow.parquet as pq

    wanted = parquet_columns(location, columns, task)
    rename = columns.fields(task)
    with location.open_read() as f:
        pf = pq.ParquetFile(f)
        end = pf.metadata.num_rows if end is None else end
        groups, row = _covering_groups(pf.metadata, start, end)
        if not groups:
            return
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups, columns=wanted):
            for record in batch.to_pylist():
                if start <= row < end:
                    yield row, {rename[k]: v for k, v in record.items() if v is not None}
                row += 1
                if row >= end:
                    return


def _covering_groups(metadata, start: int, end: int) -> tuple[list[int], int]:
    """Row groups overlapping [start, end), and the index of the first row of the first one."""
    groups, first, offset = [], None, 0
    for i in range(metadata.num_row_groups):
        n = metadata.row_group(i).num_rows
        if offset < end and offset + n > start:
            groups.append(i)
            first = offset if first is None else first
        offset += n
    return groups, first or 0
