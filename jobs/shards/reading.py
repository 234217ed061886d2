"""A shard's rows read back from the input and validated exactly as the planner validated them."""
from __future__ import annotations

from tide.jobs.inputs import InputRow, parse_jsonl, parse_record
from tide.jobs.planner import duplicate_error
from tide.jobs.readers import iter_jsonl_lines, iter_parquet_rows
from tide.jobs.rows import ErrorRow
from tide.jobs.specs import ShardTask
from tide.jobs.storage import StorageConfig, resolve


def read_shard_rows(task: ShardTask, storage: StorageConfig) -> tuple[list[InputRow], list[ErrorRow]]:
    """The shard's rows and error rows (duplicate ids come from the plan)."""
    location, shard, spec = resolve(task.spec.input, storage), task.shard, task.spec
    if task.format == "jsonl":
        parsed = (parse_jsonl(line, spec)
                  for line in iter_jsonl_lines(location, shard.start, shard.end, shard.first_row) if line.is_row)
    else:
        parsed = (parse_record(raw, row, spec)
                  for row, raw in iter_parquet_rows(location, spec.columns, spec.task, shard.start, shard.end))
    duplicates = set(shard.duplicate_rows)
    rows: list[InputRow] = []
    errors: list[ErrorRow] = []
    for item in parsed:
        if not isinstance(item, ErrorRow) and item.row in duplicates:
            item = duplicate_error(item.row, item.custom_id)
        (errors if isinstance(item, ErrorRow) else rows).append(item)
    return rows, errors
