"""Input files written and result parts read back, as the tests of jobs make and check them."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows may be dicts (dumped as JSON) or raw strings (written as they are, to make bad lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_parts(prefix, kind="part-"):
    files = sorted(p for p in prefix.iterdir() if p.name.startswith(kind))
    return [row for f in files for row in pq.read_table(f).to_pylist()]
