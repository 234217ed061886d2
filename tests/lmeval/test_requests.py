"""lm-eval requests as rows and results as answers, without a model: truncation, scoring start, greediness, rolling
windows, generation options, and the job-level failures the backend must not hide."""
from __future__ import annotations

import pytest

from tide.engine.sampling_params import SamplingParams
from tide.lmeval.requests import RequestError, generation, rolling_windows, score_answer, score_row
from tide.lmeval.transport import JobFailed, collect


def entry(token_id: int, logprob: float, best: tuple[int, float]) -> dict:
    return {"token_id": token_id, "logprob": logprob, "top": [{"token_id": best[0], "logprob": best[1]}]}


def test_a_score_row_scores_only_the_continuation_and_truncates_from_the_left():
    row = score_row("s-0", [1, 2, 3, 4, 5], [6, 7], max_length=4)
    assert row["prompt"] == [3, 4, 5, 6, 7] and row["prompt_logprobs_start"] == 3
    assert row["max_tokens"] == 0 and row["prompt_logprobs"] == 1
    SamplingParams(**{k: v for k, v in row.items() if k not in ("id", "prompt")})  # a valid row
    with pytest.raises(RequestError, match="more than max_length"):
        score_row("s-1", [1], [2, 3, 4], max_length=2)
    with pytest.raises(RequestError, match="s-2: context and continuation"):
        score_row("s-2", [], [1], max_length=8)


def test_an_answer_sums_the_scored_tokens_and_is_greedy_only_if_each_was_the_top_choice():
    result = {"prompt_logprobs": [None, None, entry(5, -0.5, (5, -0.5)), entry(6, -1.25, (6, -1.25))]}
    assert score_answer(result) == (-1.75, True)
    result["prompt_logprobs"][3] = entry(6, -1.25, (9, -0.25))
    assert score_answer(result) == (-1.75, False)


def test_rolling_windows_score_every_token_once():
    tokens = list(range(10, 60))
    windows = rolling_windows(tokens, prefix_token=1, max_length=16)
    assert len(windows) == 4 and windows[0][0] == [1]
    assert [t for _, continuation in windows for t in continuation] == tokens
    assert all(len(context) + len(continuation) <= 17 for context, continuation in windows)


def test_generation_rows_follow_lm_evals_options():
    greedy = generation("g-0", list(range(100)), {"until": "\n", "max_gen_toks": 8, "temperature": 0.7,
                                                   "do_sample": False}, max_length=40, default_max_gen_toks=256,
                        eos_text="<eos>")
    assert greedy.row["prompt"] == list(range(68, 100))  # room for the 8 new tokens within max_length
    assert greedy.row["temperature"] == 0.0 and greedy.row["max_tokens"] == 8
    assert greedy.row["stop"] == ["\n", "<eos>"] and greedy.answer({"text": "yes\nno"}) == "yes"
    sampled = generation("g-1", [5], {"do_sample": True, "temperature": 0.5, "top_p": 0.9, "seed": 3},
                         max_length=40, default_max_gen_toks=16, eos_text=None)
    assert (sampled.row["temperature"], sampled.row["top_p"], sampled.row["seed"], sampled.row["max_tokens"]) == (
        0.5, 0.9, 3, 16)
    with pytest.raises(RequestError, match="g-2: generation option.s. num_beams"):
        generation("g-2", [5], {"num_beams": 2}, 40, 16, None)
    with pytest.raises(RequestError, match="must be less than max_length"):
        generation("g-3", [5], {"max_gen_toks": 40}, 40, 16, None)


def test_a_job_without_every_result_fails_naming_the_request_and_the_reason():
    rows = [{"id": "s-0"}, {"id": "s-1"}]
    results = [{"custom_id": "s-0", "sample_index": 0, "text": ""}]
    assert collect("job_1", "completed", rows[:1], results, []) == {"s-0": results[0]}
    errors = [{"custom_id": "s-1", "message": "line 2 (id s-1): prompt has 9000 tokens"}]
    with pytest.raises(JobFailed, match="no result for 1 of 2 requests; request s-1: line 2 .* 9000 tokens"):
        collect("job_1", "completed", rows, results, errors)
