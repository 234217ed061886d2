"""Suites made of lm-eval tasks: the suites file, and runs in process whose documents land in the history as items,
with regressions against the previous run and lm-eval's task metrics in run.json."""
from __future__ import annotations

import json
import re

import pytest

from tests.helpers.lmeval_tasks import QUESTIONS, write_tasks
from tests.helpers.pipeline import LOCAL
from tide.jobs.evals.history import History
from tide.jobs.evals.runner import EmbeddedExecutor, run_suite
from tide.jobs.evals.suites import SuiteError, load_suites, parse_suites
from tide.lmeval.suite import LmEvalHarness, item_row
from tide.wiring import engine_service


def test_an_lm_eval_suite_names_tasks_in_place_of_dataset_and_scorer(tmp_path):
    (tmp_path / "suites.yaml").write_text("suites:\n  h:\n    lm_eval: {tasks: [tide_mc], include_path: tasks}\n"
                                          "    history: history\n    schedule: '0 3 * * *'\n")
    suite = load_suites(tmp_path / "suites.yaml")["h"]
    assert suite.lm_eval.include_path == str(tmp_path / "tasks") and suite.dataset is None
    for body, words in [("history: h", "give a dataset (with a scorer) or lm_eval tasks"),
                        ("dataset: d.jsonl\n    lm_eval: {tasks: [x]}\n    history: h", "one of the two"),
                        ("lm_eval: {tasks: [x]}\n    scorer: exact\n    history: h", "drop scorer and sampling"),
                        ("lm_eval: {tasks: []}\n    history: h", "lm_eval.tasks"),
                        ("lm_eval: {tasks: [x], shots: 2}\n    history: h", "lm_eval.shots")]:
        with pytest.raises(SuiteError, match=re.escape(words)):
            parse_suites(f"suites:\n  s:\n    {body}\n")


def test_a_document_without_a_numeric_metric_is_an_error_item_not_a_silent_pass():
    sample = {"doc_id": 3, "filter": "none", "metrics": ["word_perplexity"], "word_perplexity": (-12.5, 4),
              "target": "x", "filtered_resps": [-12.5]}
    row = item_row("ppl", sample, None)
    assert row.id == "ppl/3" and not row.passed and "no per-document numeric metric" in row.error
    graded = item_row("gen", {"doc_id": 0, "filter": "strict", "exact_match": 1.0, "metrics": ["exact_match"],
                              "target": " 4", "filtered_resps": [" 4"]}, None)
    assert (graded.id, graded.output, graded.expected, graded.passed, graded.score) == ("gen/0/strict", " 4", " 4",
                                                                                          True, 1.0)


def test_runs_score_documents_as_items_and_report_the_changed_one(tiny_model_dir, tmp_path):
    include = write_tasks(tmp_path / "tasks")
    body = (f"suites:\n  harness:\n    model: {tiny_model_dir('llama')}\n    lm_eval:\n      tasks: [tide_mc, tide_gen]\n"
            f"      include_path: {include}\n    history: {tmp_path / 'history'}\n")
    suite = parse_suites(body)["harness"]
    service = engine_service(suite.model, "float32")
    executor = EmbeddedExecutor(service, LOCAL, price_per_worker_hour=0.0, template=None)
    try:
        first = run_suite("harness", suite, executor, LOCAL, harness=LmEvalHarness())
        history = History(suite.history, "harness", LOCAL)
        items = {row.id: row for row in history.results(first.run_id)}
        assert first.n == len(items) == 6 + 5 and first.errors == 0 and first.job_status == "completed"
        assert first.dataset == "lm-eval: tide_mc, tide_gen" and first.scorer == "lm-eval"
        mc = [items[f"tide_mc/{i}"] for i in range(6)]
        assert first.lm_eval["results"]["tide_mc"]["acc,none"] == pytest.approx(sum(r.score for r in mc) / 6)
        assert len(first.lm_eval["jobs"]) == 2 and first.job_id == first.lm_eval["jobs"][-1]

        # Move the answer of question 0 away from (or onto) the model's choice: it regresses (or improves).
        chosen = max(range(4), key=lambda i: float(json.loads(mc[0].output)[i][0]))
        question, choices, answer = QUESTIONS[0]
        new_answer = (answer + 1) % 4 if mc[0].passed else chosen
        write_tasks(include, questions=[(question, choices, new_answer), *QUESTIONS[1:]])
        second = run_suite("harness", suite, executor, LOCAL, harness=LmEvalHarness())
    finally:
        service.close()
    assert second.previous_run_id == first.run_id
    changed = (second.regressions, second.improvements)
    assert changed == ((["tide_mc/0"], []) if mc[0].passed else ([], ["tide_mc/0"]))
    assert [r["run_id"] for r in history.index()] == [first.run_id, second.run_id]


def test_a_suite_of_lm_eval_tasks_needs_the_harness(tmp_path):
    suite = parse_suites(f"suites:\n  h:\n    lm_eval: {{tasks: [x]}}\n    history: {tmp_path}\n")["h"]
    with pytest.raises(SuiteError, match="pip install 'tide\\[evals\\]'"):
        run_suite("h", suite, executor=None, storage=LOCAL)
