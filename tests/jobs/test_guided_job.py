"""A job of OpenAI batch lines asking for structured output, on a real (tiny) engine: every result matches its
schema, and a line whose schema cannot be compiled becomes one error row while the job goes on."""
import json

import jsonschema
import pyarrow.parquet as pq

from tests.helpers.pipeline import run_on_engine
from tests.helpers.rows import write_jsonl
from tide.engine.llm_engine import LLMEngine
from tide.jobs.specs import JobSpec
from tide.jobs.state import JobStatus

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                           "zip": {"type": "integer", "minimum": 1000, "maximum": 9999}},
          "required": ["city", "zip"], "additionalProperties": False}


def line(custom_id: str, response_format: dict) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": f"Where is {custom_id}?"}], "max_tokens": 60,
                     "temperature": 0, "response_format": response_format}}


def test_structured_output_job_with_a_bad_schema_row(tmp_path, tiny_model_dir):
    good = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}}
    bad = {"type": "json_schema", "json_schema": {"name": "oops", "schema": {"type": "objekt"}}}
    rows = [line(f"q{i}", good) for i in range(6)] + [line("bad", bad), line("any", {"type": "json_object"})]
    spec = JobSpec(input=str(write_jsonl(tmp_path / "in.jsonl", rows)), output=str(tmp_path / "out"),
                   endpoint="/v1/chat/completions")
    engine = LLMEngine(model=str(tiny_model_dir("llama")), dtype="float32", device="cpu", kv_cache_bytes=16 << 20)
    job = run_on_engine(spec, engine)
    assert job.status == JobStatus.COMPLETED
    prefix = tmp_path / "out" / job.id
    results = {r["custom_id"]: r for f in sorted(prefix.glob("part-*")) for r in pq.read_table(f).to_pylist()}
    assert set(results) == {f"q{i}" for i in range(6)} | {"any"}
    for i in range(6):
        jsonschema.validate(json.loads(results[f"q{i}"]["text"]), SCHEMA)
    errors = [e for f in sorted(prefix.glob("errors-*")) for e in pq.read_table(f).to_pylist()]
    assert [(e["custom_id"], e["code"]) for e in errors] == [("bad", "invalid_guided")]
    assert "guided.json_schema" in errors[0]["message"] and "objekt" in errors[0]["message"]
