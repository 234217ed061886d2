"""What an embedding job writes: one Parquet row per input (its vector as a fixed-size list of float32, its token
count), and, for an OpenAI batch, each request's response body in OpenAI's embedding shape."""
from __future__ import annotations

import base64
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tide.jobs.storage import Location
from tide.jobs.writers import part_name


@dataclass(frozen=True)
class EmbeddingResult:
    custom_id: str
    row_index: int
    input_index: int  # the input's place in its row's list (0 for a single input)
    embedding: np.ndarray  # float32
    tokens: int
    latency_s: float | None
    encoding_format: str  # how an OpenAI output line carries it (float or base64)
    finished_at: float | None = None  # unix time the request finished
    # An embedding has no first token or time per token: the service-wide TTFT/TPOT histograms skip these rows.
    ttft_s: ClassVar[None] = None
    tpot_s: ClassVar[None] = None


def embedding_schema(width: int | None) -> pa.Schema:
    """Parquet schema of an embedding part: `embedding` is a fixed-size list when every vector in the part has
    `width` values (one `dimensions` for the whole job, the usual case), a list otherwise."""
    vector = pa.list_(pa.float32(), width) if width is not None else pa.list_(pa.float32())
    return pa.schema([("custom_id", pa.string()), ("row_index", pa.int64()), ("input_index", pa.int32()),
                      ("embedding", vector), ("tokens", pa.int32()), ("latency_s", pa.float64()),
                      ("encoding_format", pa.string()), ("finished_at", pa.float64())])


def write_embeddings(prefix: Location, shard: int, results: Iterable[EmbeddingResult]) -> None:
    """Commit the shard's embeddings part, sorted by row and input; a shard without any removes a stale part."""
    ordered = sorted(results, key=lambda r: (r.row_index, r.input_index))
    target = prefix.child(part_name(shard))
    if not ordered:
        if target.exists():
            target.delete()
        return
    widths = {r.embedding.shape[0] for r in ordered}
    width = widths.pop() if len(widths) == 1 else None
    schema = embedding_schema(width)
    flat = pa.array(np.concatenate([r.embedding for r in ordered]).astype(np.float32, copy=False))
    if width is not None:
        vectors = pa.FixedSizeListArray.from_arrays(flat, width)
    else:
        vectors = pa.ListArray.from_arrays(pa.array(np.cumsum([0] + [r.embedding.shape[0] for r in ordered],
                                                              dtype=np.int32)), flat)
    columns = {name: [getattr(r, name) for r in ordered] for name in schema.names if name != "embedding"}
    table = pa.table({**columns, "embedding": vectors}).select(schema.names).cast(schema)
    with tempfile.TemporaryDirectory(prefix="tide-part-") as tmp:
        path = Path(tmp) / "part.parquet"
        pq.write_table(table, path, compression="zstd")
        target.commit_file(path)


def embedding_bodies(rows: Iterable[dict], model: str) -> Iterator[tuple[str, dict]]:
    """Result rows (in row, input order) -> (custom_id, OpenAI embedding response body) per request."""
    for _, group in groupby(rows, key=lambda r: r["row_index"]):
        inputs = list(group)
        tokens = sum(r["tokens"] for r in inputs)
        data = [{"object": "embedding", "index": r["input_index"], "embedding": _encoded(r)} for r in inputs]
        yield inputs[0]["custom_id"], {"object": "list", "data": data, "model": model,
                                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encoded(row: dict) -> list[float] | str:
    if row["encoding_format"] == "base64":  # OpenAI's: the little-endian float32 bytes, base64-encoded
        return base64.b64encode(np.asarray(row["embedding"], dtype="<f4").tobytes()).decode()
    return row["embedding"]
