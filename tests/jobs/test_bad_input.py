"""Bad input, generated (hypothesis): JSONL lines and Parquet rows of every wrong shape become one error row each,
naming the line and the field; nothing raises, no line is lost or counted twice. The API payload side is
tests/api/test_bad_payloads.py. Each test prints how many inputs it tried (`FUZZ` lines, -s to see them)."""
from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.fuzz import BREAKAGES, mutate
from tests.helpers.pipeline import LOCAL
from tide.jobs.planner import plan_job
from tide.jobs.rows import ErrorRow, PromptRow, parse_json_line
from tide.jobs.shards.reading import read_shard_rows
from tide.jobs.specs import JobSpec, ShardTask
from tide.jobs.storage import StorageError

SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=20))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                             max_size=4), max_leaves=12)
SAMPLING = st.sampled_from(["max_tokens", "temperature", "top_p", "top_k", "n", "seed", "min_tokens", "stop",
                            "presence_penalty", "logprobs", "ignore_eos"])
FIELDS = st.sampled_from(["id", "custom_id", "prompt", "messages", "method", "url", "body", "surprise"]) | SAMPLING
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "robot", 3]),
                                           "content": st.text(max_size=10) | VALUES}), max_size=3)
ROWS = st.dictionaries(FIELDS, VALUES | MESSAGES | st.text(min_size=1, max_size=10), max_size=6)
tried = {"jsonl lines": 0, "jsonl files": 0, "parquet files": 0}


LINES = st.builds(lambda row, how, at: mutate(json.dumps(row, allow_nan=True).encode(), how, at, 1000, 200, "prompt"),
                  ROWS, st.sampled_from(BREAKAGES), st.integers(0, 500))


def check_row(item, row: int) -> None:
    assert isinstance(item, (PromptRow, ErrorRow)) and item.row == row
    if isinstance(item, ErrorRow):
        assert item.message.startswith(f"line {row + 1}") and item.code
        assert item.param is None or isinstance(item.param, str)
    else:  # what reaches the engine is sane
        params = item.params
        assert all(math.isfinite(v) for v in (params.temperature, params.top_p, params.presence_penalty))
        assert params.max_tokens is None or params.max_tokens >= 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line=LINES, row=st.integers(0, 10**6), endpoint=st.sampled_from([None, "/v1/chat/completions"]))
def test_any_line_is_one_row_or_one_error_naming_its_line(line, row, endpoint):
    tried["jsonl lines"] += 1
    check_row(parse_json_line(line, row, {}, endpoint), row)


def plan_and_read(spec: JobSpec) -> list:
    plan = plan_job(spec, LOCAL)
    items = []
    for shard in plan.shards:
        task = ShardTask(job_id="j", spec=spec, format=plan.format, shard=shard, output_prefix="unused", deadline=0)
        rows, errors = read_shard_rows(task, LOCAL)
        items += rows + errors
    assert plan.total_rows == len(items)
    return items


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(lines=st.lists(LINES, min_size=1, max_size=12), shard_rows=st.integers(1, 5))
def test_a_whole_file_of_bad_lines_plans_and_reads_every_line_once(tmp_path, lines, shard_rows):
    tried["jsonl files"] += 1
    lines = [line.replace(b"\n", b" ") for line in lines]
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    items = plan_and_read(JobSpec(input=str(path), output=str(tmp_path / "out"), shard_rows=shard_rows))
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    assert sorted(i.row for i in items) == nonblank  # blank lines are skipped, every other line counted once
    for item in items:
        check_row(item, item.row)
    ids = [i.custom_id for i in items if isinstance(i, PromptRow)]
    assert len(ids) == len(set(ids))  # a repeated id is an error row, not a second result


PARQUET_COLUMNS = st.sampled_from([
    (pa.string(), st.none() | st.text(max_size=10)),
    (pa.int64(), st.none() | st.integers(-2**63, 2**63 - 1)),
    (pa.float64(), st.none() | st.floats(allow_nan=True, allow_infinity=True)),
    (pa.list_(pa.string()), st.none() | st.lists(st.text(max_size=5), max_size=3)),
    (pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
     st.none() | st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "x"]),
                                                 "content": st.none() | st.text(max_size=5)}), max_size=2)),
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data(), n=st.integers(1, 8), shard_rows=st.integers(1, 4))
def test_parquet_rows_of_any_type_plan_and_read_every_row_once(tmp_path, data, n, shard_rows):
    tried["parquet files"] += 1
    columns = {}
    names = data.draw(st.lists(st.sampled_from(["prompt", "messages", "id", "max_tokens", "temperature"]),
                               min_size=1, max_size=4, unique=True))
    for name in names if {"prompt", "messages"} & set(names) else names + ["prompt"]:
        kind, values = data.draw(PARQUET_COLUMNS)
        columns[name] = pa.array(data.draw(st.lists(values, min_size=n, max_size=n)), type=kind)
    path = tmp_path / "fuzz.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=data.draw(st.integers(1, 4)))
    items = plan_and_read(JobSpec(input=str(path), output=str(tmp_path / "out"), shard_rows=shard_rows))
    assert sorted(i.row for i in items) == list(range(n))
    for item in items:
        check_row(item, item.row)


def test_a_parquet_file_without_prompt_columns_fails_the_job_naming_its_columns(tmp_path):
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"id": ["a"]}), path)
    with pytest.raises(StorageError, match="has no 'prompt' or 'messages' column"):
        plan_job(JobSpec(input=str(path), output=str(tmp_path / "out")), LOCAL)


def test_ten_megabyte_strings_and_absurd_values_are_error_rows_or_plain_rows():
    huge = json.dumps({"id": "big", "prompt": "x" * 10_000_000}).encode()
    assert isinstance(parse_json_line(huge, 0, {}), PromptRow)  # the engine refuses it later, by its length
    for bad, field in [({"prompt": "p", "temperature": -1}, "temperature"),
                       ({"prompt": "p", "max_tokens": -1}, "max_tokens"), ({"prompt": "p", "n": -3}, "n"),
                       (b'{"prompt": "p", "top_p": NaN}', "top_p"),
                       (b'{"prompt": "p", "temperature": Infinity}', "temperature"),
                       ({"prompt": "p", "frobnicate": 1}, "frobnicate")]:
        line = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
        item = parse_json_line(line, 4, {})
        assert isinstance(item, ErrorRow) and item.param == field and item.message.startswith("line 5"), item


@pytest.fixture(scope="module", autouse=True)
def print_counts():
    yield
    print(f"\nFUZZ {', '.join(f'{k}: {v}' for k, v in tried.items())}")
