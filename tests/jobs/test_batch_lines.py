"""OpenAI batch lines per endpoint: what maps onto sampling, what is accepted and ignored, what Tide cannot honour
(refused naming the line and the field, failing the batch), and what no endpoint knows (that request's 400)."""
from __future__ import annotations

import pytest

from tide.jobs.rows import ErrorRow, PromptRow, fails_batch, parse_row

CHAT, COMPLETIONS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/responses"
HI = [{"role": "user", "content": "hi"}]


def line(url: str, models=frozenset(), **body):
    return parse_row({"custom_id": "c", "method": "POST", "url": url, "body": body}, 3, {}, url, models)


def test_a_responses_line_takes_input_instructions_and_its_own_field_names():
    row = line(RESPONSES, input="Hello", instructions="Be brief.", max_output_tokens=12, temperature=0.2, top_p=0.9,
               metadata={"team": "a"}, store=False, user="u1")
    assert isinstance(row, PromptRow)
    assert row.prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert (row.params.max_tokens, row.params.temperature, row.params.top_p) == (12, 0.2, 0.9)
    assert '"metadata": {"team": "a"}' in row.echo and '"instructions": "Be brief."' in row.echo
    messages = line(RESPONSES, input=[{"type": "message", "role": "user",
                                       "content": [{"type": "input_text", "text": "a"}, {"type": "input_text",
                                                                                         "text": "b"}]},
                                      {"role": "assistant", "content": [{"type": "output_text", "text": "c"}]}])
    assert messages.prompt == [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"}]


def test_text_format_and_response_format_map_to_guided_strictly_only_when_asked():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    strict = line(RESPONSES, input="x", text={"format": {"type": "json_schema", "name": "s", "schema": schema,
                                                         "strict": True}})
    assert strict.params.guided.json_schema == schema
    lenient = line(CHAT, messages=HI, response_format={"type": "json_schema",
                                                       "json_schema": {"name": "s", "schema": schema}})
    assert lenient.params.guided.json_schema == {**schema, "x-guidance": {"lenient": True}}  # strict is OpenAI's opt-in
    assert line(RESPONSES, input="x", text={"format": {"type": "json_object"}}).params.guided.json_schema == {
        "type": "object"}


@pytest.mark.parametrize("url, body, param", [
    (CHAT, {"messages": HI, "tools": [{"type": "function", "function": {"name": "f"}}]}, "body.tools"),
    (CHAT, {"messages": HI, "logit_bias": {"50256": -100}}, "body.logit_bias"),
    (CHAT, {"messages": HI, "tool_choice": "auto"}, "body.tool_choice"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "look"},
                                                      {"type": "image_url", "image_url": {"url": "u"}}]}]},
     "body.messages[0].content[1].type"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "body.messages[0].content[0].type"),
    (CHAT, {"messages": [{"role": "tool", "content": "42", "tool_call_id": "t"}]}, "body.messages[0].role"),
    (CHAT, {"messages": [{"role": "user", "content": "a", "name": "ann"}]}, "body.messages[0].name"),
    (CHAT, {"messages": HI, "stream": True}, "body.stream"),
    (CHAT, {"messages": HI, "audio": {"voice": "x"}}, "body.audio"),
    (COMPLETIONS, {"prompt": "p", "echo": True}, "body.echo"),
    (COMPLETIONS, {"prompt": "p", "best_of": 3}, "body.best_of"),
    (COMPLETIONS, {"prompt": ["a", "b"]}, "body.prompt"),
    (RESPONSES, {"input": "x", "tools": [{"type": "web_search"}]}, "body.tools"),
    (RESPONSES, {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
     "body.input[0].content[0].type"),
    (RESPONSES, {"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "body.input[0].type"),
    (RESPONSES, {"input": "x", "previous_response_id": "resp_1"}, "body.previous_response_id"),
    (RESPONSES, {"input": "x", "reasoning": {"effort": "high"}}, "body.reasoning"),
])
def test_what_tide_cannot_honour_is_refused_naming_line_and_field_and_fails_the_batch(url, body, param):
    row = line(url, **body)
    assert isinstance(row, ErrorRow) and row.code == "unsupported_field", row
    assert row.param == param and row.message.startswith("line 4 (id c): ") and param in row.message
    assert fails_batch(row)


@pytest.mark.parametrize("url, body", [
    (CHAT, {"messages": HI, "tools": [], "tool_choice": "none", "parallel_tool_calls": False, "stream": False,
            "store": True, "service_tier": "auto", "user": "u", "metadata": {"k": "v"}, "modalities": ["text"],
            "stream_options": None, "prompt_cache_key": "k"}),
    (COMPLETIONS, {"prompt": "p", "echo": False, "suffix": None, "best_of": 1, "logprobs": None, "user": "u"}),
    (RESPONSES, {"input": "x", "tools": [], "include": [], "truncation": "disabled", "background": False,
                 "store": False, "service_tier": "default", "text": {"format": {"type": "text"}}}),
])
def test_fields_that_ask_for_nothing_tide_lacks_are_accepted_and_ignored(url, body):
    assert isinstance(line(url, **body), PromptRow), line(url, **body)


def test_an_unknown_body_field_fails_its_request_alone():
    row = line(CHAT, messages=HI, frobnicate=1)
    assert isinstance(row, ErrorRow) and row.code == "unknown_field" and row.param == "body.frobnicate"
    assert not fails_batch(row)
    bad_value = line(CHAT, messages=HI, temperature=-3)
    assert bad_value.code == "invalid_field" and not fails_batch(bad_value)


def test_a_batch_runs_one_model_and_another_name_fails_validation():
    models = frozenset({"smollm2-135m", "gpt-4o-mini"})  # the served model and the alias the batch named
    assert isinstance(line(CHAT, models, model="gpt-4o-mini", messages=HI), PromptRow)
    assert isinstance(line(CHAT, models, model="smollm2-135m", messages=HI), PromptRow)
    assert isinstance(line(CHAT, models, messages=HI), PromptRow)
    other = line(CHAT, models, model="gpt-4o", messages=HI)
    assert other.code == "mismatched_model" and other.param == "body.model" and fails_batch(other)


def test_lines_naming_another_endpoint_fail_the_batch():
    row = parse_row({"custom_id": "e", "url": "/v1/embeddings", "body": {"input": "x"}}, 0, {}, CHAT)
    assert row.code == "mismatched_url" and fails_batch(row)
    row = parse_row({"custom_id": "e", "url": "/v1/moderations", "body": {"input": "x"}}, 0, {}, CHAT)
    assert row.code == "unsupported_endpoint" and "/v1/embeddings" in row.message and fails_batch(row)
    row = parse_row({"custom_id": "e", "url": COMPLETIONS, "body": {"prompt": "x"}}, 0, {}, CHAT)
    assert row.code == "mismatched_url" and fails_batch(row)


def test_chat_logprobs_and_completions_logprobs():
    assert line(CHAT, messages=HI, logprobs=True, top_logprobs=3).params.logprobs == 3
    assert line(CHAT, messages=HI, logprobs=False).params.logprobs is None
    assert line(COMPLETIONS, prompt="p", logprobs=2).params.logprobs == 2
    assert line(CHAT, messages=HI, top_logprobs=2).code == "invalid_field"
