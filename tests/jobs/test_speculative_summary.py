"""A job served by a speculating engine reports its acceptance rate in summary.json and in the printed report."""
from __future__ import annotations

import json

from tests.helpers.pipeline import run_local
from tests.helpers.rows import write_jsonl
from tide.engine import EngineConfig, LLMEngine
from tide.jobs.specs import JobSpec
from tide.jobs.summary import format_report
from tide.workers.engine_service import EngineService


def test_job_summary_and_worker_figures_carry_the_acceptance_rate(tmp_path, tiny_model_dir):
    model = str(tiny_model_dir("llama"))
    engine = LLMEngine(EngineConfig(model=model, dtype="float32", num_threads=1, speculative="draft",
                                    draft_model=model, spec_max_running=8))  # a model drafting for itself: nearly every draft is right
    service = EngineService(engine, idle_wait_s=0.01)
    rows = [{"id": f"r{i}", "prompt": f"tell me about the number {i}"} for i in range(4)]
    rows.append({"id": "sampled", "prompt": "a sampled row is not speculated", "temperature": 0.9})
    spec = JobSpec(input=str(write_jsonl(tmp_path / "in.jsonl", rows)), output=str(tmp_path / "out"), model=model,
                   sampling={"temperature": 0.0, "max_tokens": 12, "ignore_eos": True})
    try:
        job = run_local(spec, service, shards_in_flight=1)
        figures = service.figures()
    finally:
        service.close()
    summary = json.loads((tmp_path / "out" / job.id / "summary.json").read_text())
    speculative = summary["speculative"]
    assert speculative["proposed_tokens"] == figures.spec_proposed_tokens > 0
    assert speculative["accepted_tokens"] == figures.spec_accepted_tokens
    assert speculative["acceptance_rate"] > 0.9
    assert "speculative decoding: " in format_report(summary)
