"""Beam search from job rows: each returned beam is one result row, best first; a conflicting option fails its row."""

from tests.helpers.pipeline import run_on_engine
from tests.helpers.rows import read_parts, write_jsonl
from tide.engine import LLM, LLMEngine, SamplingParams
from tide.jobs.rows import ErrorRow, parse_row
from tide.jobs.specs import JobSpec
from tide.jobs.state import JobStatus


def test_openai_body_takes_beam_search_fields():
    row = parse_row({"custom_id": "b", "url": "/v1/completions",
                     "body": {"prompt": "Once", "use_beam_search": True, "best_of": 4, "n": 2,
                              "length_penalty": 0.5, "early_stopping": "never"}}, 0, {"max_tokens": 8})
    p = row.params
    assert (p.use_beam_search, p.beam_width, p.n, p.length_penalty, p.early_stopping) == (True, 4, 2, 0.5, "never")


def test_job_writes_each_beam_as_a_sample_in_score_order(tmp_path, tiny_model_dir):
    model = str(tiny_model_dir("llama"))
    rows = [{"id": "beam", "prompt": "The sea is", "use_beam_search": True, "best_of": 3, "n": 2},
            {"id": "hot", "prompt": "The sea is", "use_beam_search": True, "temperature": 0.7},
            {"id": "plain", "prompt": "The sea is", "temperature": 0}]
    spec = JobSpec(input=str(write_jsonl(tmp_path / "in.jsonl", rows)), output=str(tmp_path / "out"),
                   sampling={"max_tokens": 6})
    job = run_on_engine(spec, LLMEngine(model=model, dtype="float32"))
    assert job.status == JobStatus.COMPLETED
    prefix = tmp_path / "out" / job.id
    results = [(r["custom_id"], r["sample_index"], r["text"]) for r in read_parts(prefix)]
    beams = LLM(model=model, dtype="float32").generate(
        "The sea is", SamplingParams(use_beam_search=True, best_of=3, n=2, max_tokens=6))[0].outputs
    assert [r for r in results if r[0] == "beam"] == [("beam", 0, beams[0].text), ("beam", 1, beams[1].text)]
    assert [r[:2] for r in results if r[0] == "plain"] == [("plain", 0)]
    [error] = read_parts(prefix, "errors-")
    assert error["custom_id"] == "hot" and "temperature" in error["message"]


def test_bad_beam_row_is_an_error_row():
    error = parse_row({"id": "x", "prompt": "p", "use_beam_search": True, "best_of": 2, "n": 3}, 0, {})
    assert isinstance(error, ErrorRow) and error.code == "invalid_field" and "n (3)" in error.message
