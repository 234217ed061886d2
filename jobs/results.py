"""Read a job's committed parts back, a record batch at a time, in shard (hence input) order."""
from __future__ import annotations

from collections.abc import Collection, Iterator

import pyarrow.parquet as pq

from tide.jobs.state import Job
from tide.jobs.storage import Location
from tide.jobs.store import JobStore


def iter_output_rows(prefix: Location, errors: bool = False, shards: Collection[int] | None = None) -> Iterator[dict]:
    """Result rows (or, with `errors`, error rows) of the job whose output is `prefix`, as dicts; with `shards`, only
    those shards' parts (a running job's: `committed_shards`)."""
    kind = "errors-" if errors else "part-"
    for name in prefix.list_names():
        if not (name.startswith(kind) and name.endswith(".parquet")):
            continue
        if shards is not None and int(name[len(kind):-len(".parquet")]) not in shards:
            continue
        with prefix.child(name).open_read() as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                yield from batch.to_pylist()


def committed_shards(store: JobStore, job: Job) -> set[int] | None:
    """The shards whose final state is recorded, hence counted in the job's request counts; None (every part) once
    the job has ended. A shard writes its parts before it records its state, so while the job runs a part on its
    own may belong to a shard not yet counted, or to an attempt a newer one is about to replace."""
    if job.status.terminal:
        return None
    return {s.index for s in store.get_shards(job.id) if s.status.terminal}
