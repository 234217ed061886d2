import json

import pytest

from tide.jobs.models import split_model
from tide.jobs.rows import ErrorRow, PromptRow, parse_json_line, parse_row


def parse(raw, defaults=None):
    return parse_row(raw, 6, defaults or {})


def test_openai_chat_batch_line_maps_body_to_sampling():
    row = parse({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"model": "x", "messages": [{"role": "user", "content": "hi"}],
                          "max_completion_tokens": 7, "temperature": 0, "seed": 3, "stop": "END",
                          "logprobs": True, "top_logprobs": 2}})
    assert isinstance(row, PromptRow)
    assert row.custom_id == "a" and row.prompt == [{"role": "user", "content": "hi"}]
    p = row.params
    assert (p.max_tokens, p.temperature, p.seed, p.stop, p.logprobs) == (7, 0.0, 3, ["END"], 2)


def test_openai_completions_line_takes_prompt_and_integer_logprobs():
    row = parse({"custom_id": "c", "method": "POST", "url": "/v1/completions",
                 "body": {"prompt": "Once", "max_tokens": 5, "logprobs": 1, "n": 2}})
    assert row.prompt == "Once" and row.params.logprobs == 1 and row.params.n == 2


def test_plain_rows_default_ids_and_row_overrides_beat_job_defaults():
    row = parse({"prompt": "hello", "max_tokens": 9}, defaults={"max_tokens": 4, "temperature": 0.5})
    assert row.custom_id == "row-6"
    assert row.params.max_tokens == 9 and row.params.temperature == 0.5
    content_parts = parse({"id": 12, "messages": [{"role": "user", "content": [{"type": "text", "text": "yo"}]}]})
    assert content_parts.custom_id == "12" and content_parts.prompt[0]["content"] == "yo"


def test_token_id_prompts_pass_through_as_given_with_scoring_options():
    row = parse({"id": "s", "prompt": [7, 8, 9], "max_tokens": 0, "prompt_logprobs": 1, "prompt_logprobs_start": 2})
    assert row.prompt == [7, 8, 9]
    assert (row.params.max_tokens, row.params.prompt_logprobs, row.params.prompt_logprobs_start) == (0, 1, 2)
    batch = parse({"custom_id": "c", "url": "/v1/completions", "body": {"prompt": [3, 4], "max_tokens": 2}})
    assert batch.prompt == [3, 4]


@pytest.mark.parametrize("raw, code, words", [
    ({"id": "x"}, "missing_prompt", "no prompt"),
    ({"id": "x", "prompt": "p", "colour": 1}, "unknown_field", "colour"),
    ({"custom_id": "x", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "a"}],
                                                                "frobnicate": 1}}, "unknown_field", "frobnicate"),
    ({"id": "x", "prompt": "p", "temperature": -1}, "invalid_field", "temperature"),
    ({"id": "x", "messages": [{"role": "wizard", "content": "a"}]}, "invalid_field", "messages[0]"),
    ({"custom_id": "x", "url": "/v1/embeddings", "body": {}}, "invalid_field", "a job with task embed"),
    ([1, 2], "invalid_row", "JSON object"),
    ({"id": "x", "prompt": [5, -1]}, "invalid_field", "list of token ids"),
    ({"id": "x", "prompt": []}, "invalid_field", "non-empty"),
    ({"id": "x", "prompt": [1, True]}, "invalid_field", "list of token ids"),
])
def test_bad_rows_become_error_rows_naming_line_id_and_reason(raw, code, words):
    error = parse(raw)
    assert isinstance(error, ErrorRow) and error.code == code
    assert words in error.message and "line 7" in error.message
    if isinstance(raw, dict):
        assert error.custom_id == "x" and "id x" in error.message


def test_invalid_json_line():
    error = parse_json_line(b'{"prompt": "unterminated', 0, {})
    assert isinstance(error, ErrorRow) and error.code == "invalid_json" and error.line == 1
    assert isinstance(parse_json_line(json.dumps({"prompt": "ok"}).encode(), 0, {}), PromptRow)


def test_json_lines_are_read_as_utf8_with_or_without_a_byte_order_mark():
    line = '{"id": "é", "prompt": "naïve"}'.encode()
    assert parse_json_line(line, 0, {}).prompt == "naïve"
    assert parse_json_line(b"\xef\xbb\xbf" + line, 0, {}).custom_id == "é"
    error = parse_json_line(b'{"prompt": "\xff"}', 3, {})
    assert isinstance(error, ErrorRow) and error.code == "invalid_json" and error.message.startswith("line 4")


def test_rows_name_lora_adapters_by_field_by_model_or_by_job_default():
    plain = parse({"prompt": "hi", "lora": "support-v3"}, defaults={"lora": "legal"})
    assert plain.params.lora == "support-v3"  # the row's own adapter beats the job's default
    assert parse({"prompt": "hi"}, defaults={"lora": "legal"}).params.lora == "legal"
    assert parse({"prompt": "hi"}).params.lora is None
    line = parse({"custom_id": "a", "url": "/v1/completions",
                  "body": {"model": "smollm2-135m:support-v3", "prompt": "hi"}})
    assert line.params.lora == "support-v3"
    assert parse({"custom_id": "b", "body": {"model": "smollm2-135m", "messages": [
        {"role": "user", "content": "hi"}]}}).params.lora is None


def test_a_line_naming_two_different_adapters_is_an_error_row():
    row = parse({"custom_id": "a", "url": "/v1/completions",
                 "body": {"model": "m:one", "lora": "two", "prompt": "hi"}})
    assert isinstance(row, ErrorRow) and row.param == "body.lora" and "'one'" in row.message


def test_split_model():
    assert split_model("smollm2-135m:support-v3") == ("smollm2-135m", "support-v3")
    assert split_model("smollm2-135m") == ("smollm2-135m", None)
    assert split_model("m:") == ("m:", None)
