"""Scorers, the suites file and eval items: what passes, and what a user is told when something is wrong."""
from __future__ import annotations

import pytest

from tide.jobs.evals.dataset import read_items
from tide.jobs.evals.scorers import ScorerError, apply, get_scorer
from tide.jobs.evals.suites import SuiteError, load_suites, parse_suites
from tide.jobs.storage import StorageConfig, resolve


@pytest.mark.parametrize("name, output, expected, passed", [
    ("exact", "  Paris \n", "Paris", True),
    ("exact", "Paris.", "Paris", False),
    ("contains", "The capital is PARIS, of course", "paris", True),
    ("contains", "red and blue", ["red", "green"], False),
    ("regex", "order #12345 shipped", r"#\d{5}\b", True),
    ("json_valid", 'Here: ```json\n{"a": [1, 2]}\n```', None, True),
    ("json_valid", "{not json", None, False),
    ("json_schema", '{"name": "x", "age": 3}', {"type": "object", "required": ["name", "age"],
                                                 "properties": {"age": {"type": "integer"}}}, True),
    ("json_schema", '{"name": "x", "age": "3"}', '{"properties": {"age": {"type": "integer"}}}', False),
    ("numeric", "so the total is 1,234.50 dollars", 1234.5, True),
    ("numeric", "about 3.2", {"value": 3.14, "tolerance": 0.1}, True),
    ("numeric", "no numbers here", 4, False),
    ("choice", "Answer: (B) because...", "b", True),
    ("choice", "A is wrong; it is C", "C", False),
    ("tests.evals.test_scorers_and_suites.half_credit", "anything", "x", False),
])
def test_scorers(name, output, expected, passed):
    assert apply(get_scorer(name), output, expected).passed is passed


def half_credit(output: str, expected) -> float:
    return 0.5


def test_custom_scorer_scores_and_bad_expected_values_raise_scorer_errors():
    assert apply(get_scorer("tests.evals.test_scorers_and_suites:half_credit"), "x", "y").score == 0.5
    with pytest.raises(ScorerError, match="regular expression"):
        apply(get_scorer("regex"), "x", "(")
    with pytest.raises(ScorerError, match="single letter"):
        apply(get_scorer("choice"), "A", "AB")
    with pytest.raises(ScorerError, match="unknown scorer 'fuzzy'"):
        get_scorer("fuzzy")
    with pytest.raises(ScorerError, match="cannot load scorer"):
        get_scorer("no_such_module.scorer")


def test_suites_file_paths_are_relative_to_it_and_mistakes_are_named(tmp_path):
    path = tmp_path / "suites.yaml"
    path.write_text("suites:\n  smoke:\n    dataset: data/smoke.jsonl\n    history: hist\n"
                    "    schedule: '*/5 * * * *'\n    scorer: contains\n")
    suite = load_suites(path)["smoke"]
    assert suite.dataset == str(tmp_path / "data" / "smoke.jsonl") and suite.history == str(tmp_path / "hist")
    for text, message in [("suites: [", "not valid YAML"), ("other: {}", "top-level `suites:`"),
                          ("suites:\n  s:\n    dataset: d\n    history: h\n    schedule: 'nightly'\n", "cron"),
                          ("suites:\n  s:\n    dataset: d\n    history: h\n    timezone: Mars/Base\n", "timezone"),
                          ("suites:\n  s:\n    dataset: d\n    history: h\n    sampling: {temperature: -1}\n",
                           "temperature"),
                          ("suites:\n  s:\n    history: h\n", "dataset"),
                          ("suites:\n  'bad name':\n    dataset: d\n    history: h\n", "suite name")]:
        with pytest.raises(SuiteError, match=message):
            parse_suites(text)
    with pytest.raises(SuiteError, match="cannot read suites file"):
        load_suites(tmp_path / "missing.yaml")


def test_malformed_items_become_error_items(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a", "prompt": "hi", "expected": "x"}\n{broken\n[1, 2]\n{"id": "b"}\n'
                    '{"id": "a", "prompt": "again", "expected": "y"}\n'
                    '{"id": 7, "messages": [{"role": "user", "content": "yo"}], "expected": 1}\n')
    items = read_items(resolve(str(path), StorageConfig()))
    assert [(i.id, i.error is None) for i in items] == [("a", True), ("item-1", False), ("item-2", False),
                                                         ("b", False), ("a", False), ("7", True)]
    assert "not valid JSON" in items[1].error and "repeats" in items[4].error
