"""A nightly suite made of lm-eval tasks: lm-eval runs them on Tide's backend, whose jobs go through the suite's
executor (to the workers under `tide beat`), and every task document becomes one of the suite's items, scored by
lm-eval's own per-document metric. The run's record keeps lm-eval's task-level metrics beside the suite's score."""
from __future__ import annotations

import json
import math
from importlib import metadata
from typing import Any

from tide.jobs.evals.history import ResultRow
from tide.jobs.evals.runner import Executor, Scored
from tide.jobs.evals.suites import Suite
from tide.jobs.storage import Location, StorageConfig
from tide.lmeval.model import TideLM
from tide.lmeval.transport import SpecRunner


class LmEvalHarness:
    """The `Harness` that `run_suite` hands suites with `lm_eval:` tasks to."""

    def score(self, name: str, suite: Suite, executor: Executor, storage: StorageConfig,
              run_dir: Location) -> Scored:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        tasks = suite.lm_eval
        runner = SpecRunner(executor, storage, run_dir.child("lm-eval").uri, suite.model)
        lm = TideLM(model=suite.model, tokenizer=tasks.tokenizer, max_length=tasks.max_length, runner=runner)
        try:
            results = simple_evaluate(model=lm, tasks=list(tasks.tasks), num_fewshot=tasks.num_fewshot,
                                      limit=tasks.limit, task_manager=TaskManager(include_path=tasks.include_path),
                                      log_samples=True)
        finally:
            lm.close()
        rows = [item_row(task, sample, tasks.metric) for task, samples in sorted(results["samples"].items())
                for sample in samples]
        job_id, status = runner.jobs[-1] if runner.jobs else (None, "no_items")
        details = {"lm_eval_version": metadata.version("lm-eval"), "jobs": [job for job, _ in runner.jobs],
                   "results": {task: _numbers(values) for task, values in results["results"].items()}}
        return Scored(rows, job_id, status, details)


def item_row(task: str, sample: dict[str, Any], metric: str | None) -> ResultRow:
    """One task document as a suite item: `{task}/{doc_id}` (plus the filter, where a task has several)."""
    item = f"{task}/{sample['doc_id']}" + ("" if sample.get("filter", "none") == "none" else f"/{sample['filter']}")
    output = _output(sample.get("filtered_resps"))
    expected = None if sample.get("target") is None else str(sample["target"])
    names = [metric] if metric else list(sample.get("metrics", []))
    name = next((n for n in names if _is_number(sample.get(n))), None)
    if name is None:
        why = (f"metric {metric!r} is not a per-document number of task {task}" if metric else
               f"task {task} has no per-document numeric metric (it has {', '.join(names) or 'none'})")
        return ResultRow(id=item, output=output, expected=expected, passed=False, score=0.0, error=why)
    score = float(sample[name])
    return ResultRow(id=item, output=output, expected=expected, passed=score >= 1.0, score=score)


def _output(responses: Any) -> str:
    if isinstance(responses, list) and len(responses) == 1 and isinstance(responses[0], str):
        return responses[0]  # a generation
    return json.dumps(responses, default=str)  # loglikelihoods of the choices


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in values.items() if _is_number(value)}
