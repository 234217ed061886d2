"""Reading a job's parts back: while it runs, only the shards whose state is recorded (so counted) are read."""
import pyarrow as pa
import pyarrow.parquet as pq

from tide.jobs.results import committed_shards, iter_job_rows
from tide.jobs.specs import JobSpec
from tide.jobs.state import Job, JobStatus, ShardState, ShardStatus
from tide.jobs.storage import LocalLocation
from tide.jobs.store import MemoryJobStore
from tide.jobs.writers import errors_name, part_name


def _parts(tmp_path) -> LocalLocation:
    for shard in range(3):
        pq.write_table(pa.table({"custom_id": [f"r{shard}a", f"r{shard}b"]}), tmp_path / part_name(shard))
    pq.write_table(pa.table({"custom_id": ["e1"]}), tmp_path / errors_name(1))
    return LocalLocation(tmp_path)


def test_a_running_job_reads_only_the_parts_of_shards_with_a_recorded_state(tmp_path):
    prefix, store = _parts(tmp_path), MemoryJobStore()
    job = Job(id="j1", spec=JobSpec(input="in.jsonl", output="out"), created_at=1.0, expires_at=99.0,
              output_prefix=str(tmp_path), status=JobStatus.IN_PROGRESS)
    store.put_job(job)
    # shard 2 has written its part but not yet recorded its state: its rows are not counted yet
    store.put_shards("j1", [ShardState(index=0, num_rows=2, status=ShardStatus.DONE),
                            ShardState(index=1, num_rows=2, status=ShardStatus.FAILED),
                            ShardState(index=2, num_rows=2, status=ShardStatus.RUNNING)])
    assert committed_shards(store, job) == {0, 1}
    assert [r["custom_id"] for r in iter_job_rows(store, job, prefix)] == ["r0a", "r0b", "r1a", "r1b"]
    assert [r["custom_id"] for r in iter_job_rows(store, job, prefix, errors=True)] == ["e1"]
    ended = job.moved_to(JobStatus.COMPLETED, 5.0)
    assert committed_shards(store, ended) is None
    assert len(list(iter_job_rows(store, ended, prefix))) == 6
