"""Tide's lm-eval backend against lm-eval's own Hugging Face backend on the same weights in fp32: the three request
types called directly (empty contexts, trailing spaces, truncation, several rolling windows), and whole local tasks
through `simple_evaluate` with per-document choices and generations compared."""
from __future__ import annotations

import json

import pytest
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from tests.helpers.lmeval_tasks import write_tasks
from tide.lmeval.model import TideLM

ATOL = 1e-4
MAX_LENGTH = 32  # small, so that truncation and rolling windows happen on short texts

CONTEXT = "Question: Which planet is known as the red planet?\nAnswer:"
LOGLIKELIHOOD = [
    (CONTEXT, " Mars"), (CONTEXT, " Venus"), (CONTEXT, " the planet Jupiter"), (CONTEXT, " Mars"),
    ("", "Hello world, this is a test."),  # no context: the prefix token stands in
    ("The answer is ", "yes"),  # the context's trailing space moves to the continuation
    ("one two three four five six seven eight nine ten " * 4, "eleven twelve"),  # left-truncated to max_length
]
ROLLING = ["A short one.", "The quick brown fox jumps over the lazy dog. " * 8]  # the second needs three windows
GENERATE = [
    (CONTEXT, {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}),
    ("Once upon a time", {"until": "Question", "max_gen_toks": 6}),
    ("alpha beta gamma delta epsilon zeta eta theta iota kappa " * 3, {"until": ["\n\n"], "max_gen_toks": 5}),
]


def instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def hf_backend(model_dir) -> HFLM:
    return HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=1, max_length=MAX_LENGTH)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request, tiny_model_dir):
    model_dir = tiny_model_dir(request.param)
    tide = TideLM(model=str(model_dir), dtype="float32", local=True, max_length=MAX_LENGTH)
    yield tide, hf_backend(model_dir)
    tide.close()


def test_loglikelihood_sums_and_greediness_match_hf(pair):
    tide, hf = pair
    ours = tide.loglikelihood(instances("loglikelihood", LOGLIKELIHOOD))
    theirs = hf.loglikelihood(instances("loglikelihood", LOGLIKELIHOOD))
    for args, (lp, greedy), (ref_lp, ref_greedy) in zip(LOGLIKELIHOOD, ours, theirs):
        assert abs(lp - ref_lp) < ATOL, (args, lp, ref_lp)
        assert greedy == ref_greedy, args
    assert ours[0] == ours[3]  # the repeated request is scored once and answered twice


def test_rolling_loglikelihood_matches_hf_over_several_windows(pair):
    tide, hf = pair
    ours = tide.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in ROLLING]))
    theirs = hf.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in ROLLING]))
    assert len(tide.tok_encode(ROLLING[1])) > 2 * MAX_LENGTH
    for text, lp, ref in zip(ROLLING, ours, theirs):
        assert abs(lp - ref) < ATOL * len(tide.tok_encode(text)), (text, lp, ref)


def test_greedy_generations_match_hf(pair):
    tide, hf = pair
    ours = tide.generate_until(instances("generate_until", GENERATE))
    theirs = hf.generate_until(instances("generate_until", GENERATE))
    assert ours == theirs


def test_unsupported_generation_options_are_refused_by_name(pair):
    tide, _ = pair
    with pytest.raises(ValueError, match="num_beams"):
        tide.generate_until(instances("generate_until", [(CONTEXT, {"until": ["\n"], "num_beams": 4})]))


def evaluate(lm, include_path, tasks: list[str]) -> dict:
    return simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=str(include_path)),
                           log_samples=True, bootstrap_iters=0)


def test_smollm2_local_tasks_agree_with_hf_document_by_document(smollm2_dir, tmp_path):
    include = write_tasks(tmp_path / "tasks")
    tide = TideLM(model=str(smollm2_dir), dtype="float32", local=True)
    try:
        ours = evaluate(tide, include, ["tide_mc", "tide_gen", "tide_ppl"])
    finally:
        tide.close()
    theirs = evaluate(HFLM(pretrained=str(smollm2_dir), dtype="float32", device="cpu", batch_size=1), include,
                      ["tide_mc", "tide_gen", "tide_ppl"])
    for task in ("tide_mc", "tide_gen", "tide_ppl"):
        assert len(ours["samples"][task]) == len(theirs["samples"][task]) > 0
        for a, b in zip(ours["samples"][task], theirs["samples"][task]):
            assert a["doc_id"] == b["doc_id"]
            if task == "tide_mc":
                mine = [float(lp) for lp, _ in a["filtered_resps"]]
                ref = [float(lp) for lp, _ in b["filtered_resps"]]
                assert max(range(len(mine)), key=mine.__getitem__) == max(range(len(ref)), key=ref.__getitem__)
                assert all(abs(x - y) < ATOL for x, y in zip(mine, ref)), (mine, ref)
                assert a["acc"] == b["acc"]
            elif task == "tide_gen":
                assert a["filtered_resps"] == b["filtered_resps"] and a["exact_match"] == b["exact_match"]
            else:
                (mine, _), (ref, _) = a["word_perplexity"], b["word_perplexity"]
                assert abs(mine - ref) < 1e-3, (mine, ref)
    assert ours["results"]["tide_mc"]["acc,none"] == theirs["results"]["tide_mc"]["acc,none"] >= 0.5
    assert json.dumps(ours["results"]["tide_gen"]) == json.dumps(theirs["results"]["tide_gen"])
