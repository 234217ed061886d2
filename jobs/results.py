"""Read a job's committed parts back, a record batch at a time, in shard (hence input) order."""
from __future__ import annotations

from collections.abc import Collection, Iterator

import pyarrow.parquet as pq

from tide.jobs.state import Job
from tide.jobs.storage import Location
from tide.jobs.store import JobStore
from tide.jobs.writers import errors_name, part_name


def iter_output_rows(prefix: Location, errors: bool = False, shards: Collection[int] | None = None) -> Iterator[dict]:
    """Result rows (or, with `errors`, error rows) of the job whose output is `prefix`, as dicts; with `shards`, only
    those shards' parts."""
    kind = "errors-" if errors else "part-"
    wanted = None if shards is None else {(errors_name if errors else part_name)(shard) for shard in shards}
    for name in prefix.list_names():
        if not (name.startswith(kind) and name.endswith(".parquet")) or (wanted is not None and name not in wanted):
            continue
        with prefix.child(name).open_read() as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                yield from batch.to_pylist()


def iter_job_rows(store: JobStore, job: Job, prefix: Location, errors: bool = False) -> Iterator[dict]:
    """`iter_output_rows` of a job that may still run: only the shards counted in its request counts so far, every
    part once it has ended (what `GET /jobs/{id}/results` and `tide results` show)."""
    return iter_output_rows(prefix, errors, committed_shards(store, job))


def committed_shards(store: JobStore, job: Job) -> set[int] | None:
    """The shards whose final state is recorded, hence counted in the job's request counts; None (every part) once
    the job has ended. A shard writes its parts before it records its state, so while the job runs a part on its
    own may belong to a shard not yet counted, or to an attempt a newer one is about to replace."""
    if job.status.terminal:
        return None
    return {s.index for s in store.get_shards(job.id) if s.status.terminal}
