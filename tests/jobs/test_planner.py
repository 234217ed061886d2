import pyarrow as pa
import pyarrow.parquet as pq

from tests.helpers.pipeline import LOCAL
from tests.helpers.rows import write_jsonl
from tide.jobs.planner import plan_job
from tide.jobs.shards.reading import read_shard_rows
from tide.jobs.specs import ColumnMap, JobSpec, ShardTask


def spec_for(path, **kw) -> JobSpec:
    return JobSpec(input=str(path), output="/tmp/unused", **kw)


def shard_rows(spec, plan):
    out = []
    for shard in plan.shards:
        task = ShardTask(job_id="j", spec=spec, format=plan.format, shard=shard, output_prefix="/tmp/x", deadline=0)
        rows, errors = read_shard_rows(task, LOCAL)
        out.append(([r.row for r in rows], [(e.row, e.code) for e in errors]))
    return out


def test_jsonl_shards_are_byte_ranges_that_read_back_every_row_once(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "in.jsonl", rows[:4] + [""] + rows[4:])  # a blank line keeps line numbers
    spec = spec_for(path, shard_rows=3)
    plan = plan_job(spec, LOCAL)
    assert plan.format == "jsonl" and plan.total_rows == 10 and plan.invalid_rows == 0
    assert [s.num_rows for s in plan.shards] == [3, 3, 3, 1]
    sizes = path.stat().st_size
    assert plan.shards[0].start == 0 and plan.shards[-1].end == sizes
    assert all(a.end == b.start for a, b in zip(plan.shards, plan.shards[1:]))
    read = shard_rows(spec, plan)
    assert [r for rows_, _ in read for r in rows_] == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]  # line 5 is blank


def test_bad_rows_and_duplicate_ids_are_counted_and_reported_by_their_shard(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "prompt": "x"}, "not json", {"id": "b"}, {"id": "a", "prompt": "again"},
        {"id": "c", "prompt": "x", "bogus": 1}, {"id": "d", "prompt": "fine"}])
    spec = spec_for(path, shard_rows=2)
    plan = plan_job(spec, LOCAL)
    assert plan.total_rows == 6 and plan.invalid_rows == 4
    assert [e.code for e in plan.first_errors] == ["invalid_json", "missing_prompt", "duplicate_custom_id",
                                                    "unknown_field"]
    assert plan.shards[1].duplicate_rows == [3]
    read = shard_rows(spec, plan)
    assert read == [([0], [(1, "invalid_json")]), ([], [(2, "missing_prompt"), (3, "duplicate_custom_id")]),
                    ([5], [(4, "unknown_field")])]


def test_parquet_shards_cover_row_groups_and_map_columns(tmp_path):
    path = tmp_path / "in.parquet"
    table = pa.table({"question": [f"q{i}" for i in range(25)], "qid": list(range(25)), "extra": [1] * 25})
    pq.write_table(table, path, row_group_size=7)
    spec = spec_for(path, shard_rows=10, columns=ColumnMap(prompt="question", id="qid"))
    plan = plan_job(spec, LOCAL)
    assert plan.format == "parquet" and plan.total_rows == 25
    assert [(s.start, s.end) for s in plan.shards] == [(0, 10), (10, 20), (20, 25)]
    read = shard_rows(spec, plan)
    assert [r for rows_, _ in read for r in rows_] == list(range(25))
    task = ShardTask(job_id="j", spec=spec, format="parquet", shard=plan.shards[1], output_prefix="/x", deadline=0)
    rows, _ = read_shard_rows(task, LOCAL)
    assert rows[0].custom_id == "10" and rows[0].prompt == "q10"


def test_parquet_messages_column_of_structs(tmp_path):
    path = tmp_path / "chat.parquet"
    messages = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": f"hi {i}"}] for i in range(3)]
    pq.write_table(pa.table({"messages": messages}), path)
    spec = spec_for(path)
    plan = plan_job(spec, LOCAL)
    task = ShardTask(job_id="j", spec=spec, format="parquet", shard=plan.shards[0], output_prefix="/x", deadline=0)
    rows, errors = read_shard_rows(task, LOCAL)
    assert not errors and rows[2].prompt[1] == {"role": "user", "content": "hi 2"}


def test_the_digest_table_finds_every_repeat_and_stays_small():
    import random
    import sys

    from tide.jobs.planner import DigestSet

    seen, digests = DigestSet(4), [random.getrandbits(64) for _ in range(50_000)]
    assert not any(seen.add(d) for d in digests) and all(seen.add(d) for d in digests)
    assert len(seen) == 50_000 and sys.getsizeof(seen._table) <= 32 * 50_000 + 4096
