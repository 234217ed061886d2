"""A shard's rows read back from the input and validated exactly as the planner validated them."""
from __future__ import annotations

from tide.jobs.planner import duplicate_error, parse_jsonl
from tide.jobs.readers import iter_jsonl_lines, iter_parquet_rows
from tide.jobs.rows import ErrorRow, PromptRow, parse_row
from tide.jobs.specs import ShardTask
from tide.jobs.storage import StorageConfig, resolve


def read_shard_rows(task: ShardTask, storage: StorageConfig) -> tuple[list[PromptRow], list[ErrorRow]]:
    """The shard's rows and error rows (duplicate ids come from the plan)."""
    location, shard, defaults = resolve(task.spec.input, storage), task.shard, task.spec.sampling
    if task.format == "jsonl":
        parsed = (parse_jsonl(line, task.spec)
                  for line in iter_jsonl_lines(location, shard.start, shard.end, shard.first_row) if line.is_row)
    else:
        parsed = (parse_row(raw, row, defaults, task.spec.endpoint, task.spec.line_models())
                  for row, raw in iter_parquet_rows(location, task.spec.columns, shard.start, shard.end))
    duplicates = set(shard.duplicate_rows)
    rows: list[PromptRow] = []
    errors: list[ErrorRow] = []
    for item in parsed:
        if isinstance(item, PromptRow) and item.row in duplicates:
            item = duplicate_error(item.row, item.custom_id)
        (errors if isinstance(item, ErrorRow) else rows).append(item)
    return rows, errors
