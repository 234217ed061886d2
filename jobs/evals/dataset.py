"""Eval items from a JSONL or Parquet file (local or s3://): `id`, `prompt` or `messages`, `expected`.

A malformed item (bad JSON, no prompt, a repeated id) becomes an error item with a message, never an exception; the
good ones become the rows of the job's input file.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from tide.jobs.storage import Location


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str | list[dict] | None
    expected: Any
    error: str | None = None  # a malformed item: scored as an error row

    def job_row(self) -> dict:
        key = "prompt" if isinstance(self.prompt, str) else "messages"
        return {"id": self.id, key: self.prompt}


def read_items(location: Location) -> list[Item]:
    """Every item of the dataset, in file order; raises StorageError/OSError only when the file cannot be read."""
    data = location.read_bytes()
    if location.uri.endswith(".parquet") or data[:4] == b"PAR1":
        raw = [(i, row, None) for i, row in enumerate(pq.read_table(io.BytesIO(data)).to_pylist())]
    else:
        raw = list(_jsonl(data))
    items, seen = [], set()
    for index, row, problem in raw:
        item = _item(index, row, problem)
        if item.error is None and item.id in seen:
            item = Item(item.id, None, item.expected, f"id {item.id!r} repeats an earlier item")
        seen.add(item.id)
        items.append(item)
    return items


def _jsonl(data: bytes):
    index = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            yield index, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield index, None, f"line is not valid JSON: {exc.msg}"
        index += 1


def _item(index: int, row: Any, problem: str | None) -> Item:
    fallback = f"item-{index}"
    if problem is not None:
        return Item(fallback, None, None, problem)
    if not isinstance(row, dict):
        return Item(fallback, None, None, "item is not a JSON object")
    raw_id = row.get("id", fallback)
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool) or str(raw_id) == "":
        return Item(fallback, None, row.get("expected"), f"id must be a string or an integer, got {raw_id!r}")
    item_id, expected = str(raw_id), row.get("expected")
    prompt, messages = row.get("prompt"), row.get("messages")
    if isinstance(messages, str):  # Parquet columns often hold the messages as JSON text
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            return Item(item_id, None, expected, "messages is text that is not JSON")
    if isinstance(prompt, str) and prompt.strip():
        return Item(item_id, prompt, expected)
    if isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        return Item(item_id, messages, expected)
    return Item(item_id, None, expected, "item needs a non-empty `prompt` or `messages` (a list of {role, content})")
