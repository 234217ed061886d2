"""Read a job's committed parts back, a record batch at a time, in shard (hence input) order."""
from __future__ import annotations

from collections.abc import Iterator

import pyarrow.parquet as pq

from tide.jobs.storage import Location


def iter_output_rows(prefix: Location, errors: bool = False) -> Iterator[dict]:
    """Result rows (or, with `errors`, error rows) of the job whose output is `prefix`, as dicts."""
    kind = "errors-" if errors else "part-"
    for name in prefix.list_names():
        if not (name.startswith(kind) and name.endswith(".parquet")):
            continue
        with prefix.child(name).open_read() as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                yield from batch.to_pylist()
