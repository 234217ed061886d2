"""Parquet result and error rows -> OpenAI batch output and error lines, each body checked against the official
client's types (no field the type lacks)."""
from __future__ import annotations

import json

from openai.types import Completion
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from tests.helpers.openai_types import strictly
from tide.jobs.openai_output import error_lines, output_lines, system_fingerprint

CAFE = "café".encode()  # the é spans two tokens below: 0xC3 then 0xA9


def _token(token_id: int, piece: bytes, logprob: float) -> dict:
    return {"token_id": token_id, "logprob": logprob, "token": piece.decode("utf-8", "backslashreplace"),
            "bytes": list(piece)}


LOGPROBS = [{**_token(1, CAFE[:3], -0.1), "top": [_token(1, CAFE[:3], -0.1), _token(2, b" tea", -2.5)]},
            {**_token(3, CAFE[3:4], -0.2), "top": [_token(3, CAFE[3:4], -0.2)]},
            {**_token(4, CAFE[4:], -0.3), "top": [_token(4, CAFE[4:], -0.3)]},
            {**_token(5, b"!", -0.4), "top": [_token(5, b"!", -0.4)]}]


def _row(row_index: int, sample: int, text: str, custom_id: str = "a", **extra) -> dict:
    return {"custom_id": custom_id, "row_index": row_index, "sample_index": sample, "text": text,
            "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 2, "cached_prompt_tokens": 3,
            "logprobs": None, "finished_at": 1700000123.7, "system_fingerprint": "fp_abc", "echo": None, **extra}


def test_samples_of_one_request_are_the_choices_of_one_chat_completion():
    rows = [_row(0, 0, "x"), _row(0, 1, "y", finished_at=1700000200.2), _row(1, 0, "z", "b")]
    lines = list(output_lines(rows, "batch_1", "/v1/chat/completions", "m"))
    assert [line["custom_id"] for line in lines] == ["a", "b"]
    body = lines[0]["response"]["body"]
    completion = strictly(ChatCompletion, body)
    assert [c.message.content for c in completion.choices] == ["x", "y"]
    assert completion.created == 1700000200 and completion.system_fingerprint == "fp_abc"  # when it finished
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 4, 9)
    assert usage.prompt_tokens_details.cached_tokens == 3 and usage.completion_tokens_details.reasoning_tokens == 0
    assert lines[0]["id"] != lines[1]["id"] and lines[0]["id"].startswith("batch_req_")


def test_chat_logprobs_carry_token_strings_bytes_and_top_alternatives():
    line = next(output_lines([_row(0, 0, "café!", logprobs=LOGPROBS)], "b", "/v1/chat/completions", "m"))
    content = strictly(ChatCompletion, line["response"]["body"]).choices[0].logprobs.content
    assert [t.token for t in content] == ["caf", "\\xc3", "\\xa9", "!"]
    assert b"".join(bytes(t.bytes) for t in content).decode() == "café!"
    assert [(t.token, t.logprob) for t in content[0].top_logprobs] == [("caf", -0.1), (" tea", -2.5)]
    assert content[0].top_logprobs[1].bytes == list(b" tea")


def test_completions_logprobs_are_the_legacy_parallel_lists_with_text_offsets():
    line = next(output_lines([_row(0, 0, "café!", logprobs=LOGPROBS)], "b", "/v1/completions", "m"))
    completion = strictly(Completion, line["response"]["body"])
    assert completion.object == "text_completion" and completion.choices[0].text == "café!"
    logprobs = completion.choices[0].logprobs
    assert logprobs.tokens == ["caf", "\\xc3", "\\xa9", "!"] and logprobs.token_logprobs == [-0.1, -0.2, -0.3, -0.4]
    assert logprobs.top_logprobs[0] == {"caf": -0.1, " tea": -2.5}
    assert logprobs.text_offset == [0, 3, 3, 4]  # the é starts at 3 in the text; "!" follows it


def test_responses_lines_are_response_objects_echoing_the_request():
    echo = {"instructions": "Be brief.", "max_output_tokens": 9, "metadata": {"k": "v"}, "temperature": 0,
            "text": {"format": {"type": "json_object"}}}
    rows = [_row(0, 0, "{}", echo=json.dumps(echo)), _row(1, 0, "cut", "b", finish_reason="length")]
    done, cut = (strictly(Response, line["response"]["body"])
                 for line in output_lines(rows, "b", "/v1/responses", "m"))
    assert done.object == "response" and done.status == "completed" and done.output_text == "{}"
    assert done.output[0].content[0].type == "output_text" and done.created_at == 1700000123
    assert (done.instructions, done.max_output_tokens, done.metadata) == ("Be brief.", 9, {"k": "v"})
    assert done.temperature == 0 and done.text.format.type == "json_object"
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (5, 2, 7)
    assert done.usage.input_tokens_details.cached_tokens == 3
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.temperature == 1.0 and cut.text.format.type == "text"  # the defaults the request left alone


def test_request_errors_answer_400_in_openai_error_shape_and_the_rest_carry_the_reason():
    rows = [{"line": 3, "row_index": 2, "custom_id": "a", "code": "invalid_field", "message": "bad", "param": "n"},
            {"line": 4, "row_index": 3, "custom_id": "c", "code": "batch_expired", "message": "late", "param": None}]
    invalid, expired = error_lines(rows, "b")
    assert invalid["custom_id"] == "a" and invalid["response"]["status_code"] == 400 and invalid["error"] is None
    assert invalid["response"]["body"] == {"error": {"message": "bad", "type": "invalid_request_error",
                                                     "param": "n", "code": "invalid_field"}}
    assert expired["response"] is None and expired["error"] == {"code": "batch_expired", "message": "late"}


def test_the_fingerprint_is_stable_and_changes_with_what_changes_outputs():
    same = system_fingerprint("m", "bfloat16", "none", "0.1.0")
    assert same == system_fingerprint("m", "bfloat16", "none", "0.1.0") and same.startswith("fp_")
    assert len({same, system_fingerprint("m", "float32", "none", "0.1.0"),
                system_fingerprint("m", "bfloat16", "int8", "0.1.0"),
                system_fingerprint("m", "bfloat16", "none", "0.2.0")}) == 4
