"""Parquet result and error rows -> OpenAI batch output and error lines."""
from __future__ import annotations

from tide.jobs.openai_output import error_lines, output_lines


def _row(row_index: int, sample: int, text: str, custom_id: str = "a") -> dict:
    return {"custom_id": custom_id, "row_index": row_index, "sample_index": sample, "text": text,
            "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 2, "cached_prompt_tokens": 3,
            "logprobs": None}


def test_samples_of_one_request_are_the_choices_of_one_line():
    rows = [_row(0, 0, "x"), _row(0, 1, "y"), _row(1, 0, "z", "b")]
    lines = list(output_lines(rows, "batch_1", "/v1/chat/completions", "m", 100))
    assert [line["custom_id"] for line in lines] == ["a", "b"]
    body = lines[0]["response"]["body"]
    assert [c["message"]["content"] for c in body["choices"]] == ["x", "y"]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9,
                             "prompt_tokens_details": {"cached_tokens": 3}}
    assert lines[0]["id"] != lines[1]["id"] and lines[0]["id"].startswith("batch_req_")


def test_completions_lines_carry_text_choices():
    line = next(output_lines([_row(0, 0, "hello")], "b", "/v1/completions", "m", 1))
    body = line["response"]["body"]
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "hello"


def test_request_errors_answer_400_and_the_rest_carry_the_reason():
    rows = [{"line": 3, "row_index": 2, "custom_id": None, "code": "invalid_json", "message": "bad", "param": None},
            {"line": 4, "row_index": 3, "custom_id": "c", "code": "batch_expired", "message": "late", "param": None}]
    invalid, expired = error_lines(rows, "b")
    assert invalid["custom_id"] == "line-3" and invalid["response"]["status_code"] == 400
    assert invalid["response"]["body"]["error"]["code"] == "invalid_json"
    assert expired["response"] is None and expired["error"] == {"code": "batch_expired", "message": "late"}
