"""OpenAI `response_format` and Tide's `guided` parameter in job rows."""
import pytest

from tide.jobs.rows import ErrorRow, PromptRow, parse_row

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def chat_line(**body):
    return {"custom_id": "q", "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}], **body}}


def test_json_schema_response_format_becomes_a_guided_schema():
    row = parse_row(chat_line(response_format={"type": "json_schema",
                                               "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}}),
                    0, {})
    assert isinstance(row, PromptRow)
    assert row.params.guided.json_schema == SCHEMA and row.params.guided.kind == "json_schema"


def test_json_object_response_format_asks_for_any_object_and_text_for_nothing():
    assert parse_row(chat_line(response_format={"type": "json_object"}), 0, {}).params.guided.json_schema == {
        "type": "object"}
    assert parse_row(chat_line(response_format={"type": "text"}), 0, {}).params.guided is None


@pytest.mark.parametrize("response_format, param", [
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "body.response_format.json_schema.schema"),
    ({"type": "xml"}, "body.response_format.type"),
    ("json", "body.response_format.type"),
])
def test_bad_response_format_is_an_error_row_naming_the_field(response_format, param):
    row = parse_row(chat_line(response_format=response_format), 4, {})
    assert isinstance(row, ErrorRow) and row.param == param and "response_format" in row.message


def test_response_format_and_guided_together_are_refused():
    row = parse_row(chat_line(response_format={"type": "json_object"}, guided={"regex": "a+"}), 0, {})
    assert isinstance(row, ErrorRow) and "not both" in row.message


def test_plain_rows_and_job_defaults_take_guided():
    defaults = {"guided": {"choice": ["yes", "no"]}}
    assert parse_row({"prompt": "ok?"}, 0, defaults).params.guided.choice == ["yes", "no"]
    row = parse_row({"prompt": "ok?", "guided": {"regex": "[0-9]+"}}, 1, defaults)
    assert row.params.guided.regex == "[0-9]+" and row.params.guided.choice is None


@pytest.mark.parametrize("guided, words", [
    ({"regex": "a", "choice": ["a"]}, "exactly one"),
    ({}, "exactly one"),
    ({"choice": []}, "guided.choice"),
    ({"choice": ["a", ""]}, "non-empty"),
    ({"json": {}}, "guided.json"),
])
def test_malformed_guided_is_an_error_row(guided, words):
    row = parse_row({"prompt": "x", "guided": guided}, 2, {})
    assert isinstance(row, ErrorRow) and row.code == "invalid_field" and words in row.message
    assert row.param.startswith("guided")
