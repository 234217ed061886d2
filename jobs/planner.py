"""Validate an input file in one streaming pass and cut it into shards.

Memory stays flat whatever the file size: rows are parsed one at a time and dropped; the only state kept per row is
an 8-byte digest of its id in one open-addressing table (16-32 bytes a row, to find duplicate ids) and the shard
boundaries.
"""
from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

from tide.jobs.inputs import InputRow, parse_jsonl, parse_record
from tide.jobs.readers import Format, detect_format, iter_jsonl_lines, iter_parquet_rows
from tide.jobs.rows import ErrorRow, fails_batch, row_error
from tide.jobs.specs import JobSpec, ShardPlan
from tide.jobs.storage import Location, StorageConfig, resolve


@dataclass
class Plan:
    format: Format
    shards: list[ShardPlan]
    total_rows: int = 0
    invalid_rows: int = 0  # rows that will become error rows before reaching a worker
    first_errors: list[ErrorRow] = field(default_factory=list)  # a few, to show the user at submit
    # An OpenAI batch whose file is invalid runs nothing: what makes it so (the first `MAX_FILE_ERRORS`).
    file_errors: list[ErrorRow] = field(default_factory=list)
    too_many_rows: bool = False  # the file holds more rows than the spec's `max_requests`

    @property
    def refused(self) -> bool:
        return bool(self.file_errors) or self.too_many_rows


MAX_FILE_ERRORS = 50


@dataclass
class _Cutter:
    """Accumulates rows into shards of `shard_rows` rows."""

    shard_rows: int
    shards: list[ShardPlan] = field(default_factory=list)
    start: int = 0
    first_row: int = 0  # row index of the line at `start` (blank lines count, so it is line number - 1)
    num_rows: int = 0
    duplicates: list[int] = field(default_factory=list)

    def add(self, row: int, duplicate: bool) -> None:
        self.num_rows += 1
        if duplicate:
            self.duplicates.append(row)

    def full(self) -> bool:
        return self.num_rows >= self.shard_rows

    def cut(self, end: int, next_start: int, next_row: int) -> None:
        """Close the current shard at `end`; the next starts at byte/row `next_start`, numbered `next_row`."""
        if self.num_rows:
            self.shards.append(ShardPlan(index=len(self.shards), start=self.start, end=end, first_row=self.first_row,
                                         num_rows=self.num_rows, duplicate_rows=self.duplicates))
        self.start, self.first_row, self.num_rows, self.duplicates = next_start, next_row, 0, []


def plan_job(spec: JobSpec, storage: StorageConfig, max_errors_shown: int = 5) -> Plan:
    """Stream the input once: count rows, validate each, find duplicate ids, and cut shards.

    An OpenAI batch (`spec.endpoint`) stops early once its file is known to be invalid: past `spec.max_requests`
    rows, or with `MAX_FILE_ERRORS` file errors found.
    """
    location = resolve(spec.input, storage)
    fmt = detect_format(location, spec.format)
    plan = Plan(format=fmt, shards=[])
    cutter = _Cutter(spec.shard_rows)
    seen = DigestSet()
    rows = _jsonl_rows(location, spec, cutter) if fmt == "jsonl" else _parquet_rows(location, spec, cutter)
    for parsed in rows:
        plan.total_rows += 1
        if spec.max_requests is not None and plan.total_rows > spec.max_requests:
            plan.too_many_rows = True
            break
        duplicate = False
        if isinstance(parsed, ErrorRow):
            _note_error(plan, parsed, max_errors_shown, spec)
        else:
            duplicate = seen.add(_digest(parsed.custom_id))
            if duplicate:
                _note_error(plan, duplicate_error(parsed.row, parsed.custom_id), max_errors_shown, spec)
        cutter.add(parsed.row, duplicate)
        if len(plan.file_errors) >= MAX_FILE_ERRORS:
            break
    plan.shards = cutter.shards
    return plan


class DigestSet:
    """Nonzero 64-bit digests in one flat table with linear probing, kept at most half full: a Python set of ints
    costs about 75 bytes an entry, this 16-32."""

    def __init__(self, capacity: int = 1 << 12) -> None:
        assert capacity & (capacity - 1) == 0
        self._table = array("Q", bytes(8 * capacity))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, digest: int) -> bool:
        """Insert `digest`; True when it was already there."""
        digest = digest or 1  # 0 marks an empty slot
        table, mask = self._table, len(self._table) - 1
        slot = digest & mask
        while table[slot]:
            if table[slot] == digest:
                return True
            slot = (slot + 1) & mask
        table[slot] = digest
        self._count += 1
        if 2 * self._count > len(table):
            self._grow()
        return False

    def _grow(self) -> None:
        old, self._table, self._count = self._table, array("Q", bytes(16 * len(self._table))), 0
        for digest in old:
            if digest:
                self.add(digest)


def duplicate_error(row: int, custom_id: str) -> ErrorRow:
    return row_error(row, custom_id, "duplicate_custom_id", f"id {custom_id!r} already appears on an earlier line",
                     "custom_id")


def _jsonl_rows(location: Location, spec: JobSpec, cutter: _Cutter) -> Iterator[InputRow | ErrorRow]:
    end = rows = 0
    for line in iter_jsonl_lines(location):
        if cutter.full():
            cutter.cut(line.start, line.start, line.row)
        end, rows = line.end, line.row + 1
        if not line.is_row:
            continue
        yield parse_jsonl(line, spec)
    cutter.cut(end, end, rows)


def _parquet_rows(location: Location, spec: JobSpec, cutter: _Cutter) -> Iterator[InputRow | ErrorRow]:
    end = 0
    for row, raw in iter_parquet_rows(location, spec.columns, spec.task):
        if cutter.full():
            cutter.cut(row, row, row)
        end = row + 1
        yield parse_record(raw, row, spec)
    cutter.cut(end, end, end)


def _digest(custom_id: str) -> int:
    # The table lives for one pass in one process, so Python's string hash (SipHash, keyed afresh per process)
    # serves as well as a cryptographic digest cut to 64 bits, at a fortieth of the cost.
    return hash(custom_id) & 0xFFFF_FFFF_FFFF_FFFF


def _note_error(plan: Plan, error: ErrorRow, limit: int, spec: JobSpec) -> None:
    plan.invalid_rows += 1
    if len(plan.first_errors) < limit:
        plan.first_errors.append(error)
    if spec.endpoint is not None and fails_batch(error) and len(plan.file_errors) < MAX_FILE_ERRORS:
        plan.file_errors.append(error)
