"""Embedding job rows (`/v1/embeddings` batch lines and native `{id, input}` rows) and what an embedding job writes:
its Parquet part and OpenAI's embedding response bodies."""
from __future__ import annotations

import base64

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tide.engine.embeddings import EmbedParams
from tide.jobs.embedding_output import EmbeddingResult, embedding_bodies, write_embeddings
from tide.jobs.embeddings import MAX_INPUTS, EmbedRow, parse_embedding_row
from tide.jobs.endpoints import EMBEDDINGS_URL
from tide.jobs.rows import ErrorRow, fails_batch
from tide.jobs.storage import StorageConfig, resolve


def _line(custom_id: str = "c1", **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS_URL, "body": {"model": "m", **body}}


@pytest.mark.parametrize("value, inputs", [
    ("one text", ["one text"]),
    (["a", "b"], ["a", "b"]),
    ([101, 2023, 102], [[101, 2023, 102]]),
    ([[101, 102], [101, 7, 102]], [[101, 102], [101, 7, 102]]),
])
def test_every_openai_input_form_becomes_a_list_of_inputs(value, inputs):
    row = parse_embedding_row(_line(input=value, user="ignored"), 0, EMBEDDINGS_URL)
    assert isinstance(row, EmbedRow) and row.prompt == inputs and row.custom_id == "c1"
    assert row.params == EmbedParams() and row.encoding_format == "float"


def test_encoding_dimensions_and_truncate_are_carried():
    row = parse_embedding_row(_line(input="x", encoding_format="base64", dimensions=64, truncate=False), 3)
    assert row.encoding_format == "base64" and row.params == EmbedParams(dimensions=64, truncate=False)


def test_native_rows_embed_their_input():
    row = parse_embedding_row({"id": "doc-7", "input": "a passage", "dimensions": 32}, 0)
    assert (row.custom_id, row.prompt, row.params.dimensions) == ("doc-7", ["a passage"], 32)


@pytest.mark.parametrize("raw, code, param, words", [
    (_line(), "missing_input", "body.input", "no input"),
    (_line(input=""), "invalid_field", "body.input[0]", "empty string"),
    (_line(input=[]), "invalid_field", "body.input", "not empty"),
    (_line(input=["text", [1, 2]]), "invalid_field", "body.input[1]", "must be a string"),
    (_line(input=[[1, 2], "text"]), "invalid_field", "body.input[1]", "token ids"),
    (_line(input=[{"text": "x"}]), "invalid_field", "body.input[0]", "token ids"),
    (_line(input=[[1, 2], [-1]]), "invalid_field", "body.input[1]", "token ids"),
    (_line(input=["x"] * (MAX_INPUTS + 1)), "invalid_field", "body.input", f"at most {MAX_INPUTS}"),
    (_line(input="x", encoding_format="int8"), "invalid_field", "body.encoding_format", "float or base64"),
    (_line(input="x", dimensions=0), "invalid_field", "body.dimensions", "dimensions"),
    (_line(input="x", temperature=0.5), "unknown_field", "body.temperature", "temperature"),
    ({**_line(input="x"), "url": "/v1/chat/completions"}, "invalid_field", "url", "task embed"),
    ({"id": "n", "prompt": "x"}, "invalid_field", "input", "give the text as input"),
    ({"id": "n", "input": "x", "max_tokens": 3}, "unknown_field", "max_tokens", "max_tokens"),
])
def test_bad_rows_are_error_rows_naming_the_field(raw, code, param, words):
    row = parse_embedding_row(raw, 4)
    assert isinstance(row, ErrorRow) and (row.code, row.param) == (code, param)
    assert row.message.startswith("line 5") and words in row.message


def test_an_openai_batch_takes_only_lines_to_its_endpoint_and_model():
    row = parse_embedding_row({"id": "n", "input": "x"}, 0, EMBEDDINGS_URL)
    assert isinstance(row, ErrorRow) and row.code == "unknown_line_field" and fails_batch(row)
    chat = parse_embedding_row({**_line(input="x"), "url": "/v1/chat/completions"}, 0, EMBEDDINGS_URL)
    assert chat.code == "mismatched_url" and fails_batch(chat)
    other = parse_embedding_row(_line(input="x"), 0, EMBEDDINGS_URL, frozenset({"all-minilm-l6-v2"}))
    assert other.code == "mismatched_model" and other.param == "body.model" and fails_batch(other)
    unknown = parse_embedding_row(_line(input="x", temperature=1), 0, EMBEDDINGS_URL)
    assert unknown.code == "unknown_field" and not fails_batch(unknown)  # that request alone fails, with a 400


def _result(row: int, index: int, values, tokens: int = 3, encoding: str = "float") -> EmbeddingResult:
    return EmbeddingResult(f"c{row}", row, index, np.asarray(values, np.float32), tokens, 0.1, encoding)


def test_the_part_holds_a_fixed_size_float32_vector_per_input_in_row_order(tmp_path):
    prefix = resolve(str(tmp_path), StorageConfig())
    write_embeddings(prefix, 0, [_result(1, 0, [0.5, 0.25]), _result(0, 1, [1, 0]), _result(0, 0, [0, 1])])
    table = pq.read_table(tmp_path / "part-00000.parquet")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 2)
    rows = table.to_pylist()
    assert [(r["custom_id"], r["input_index"], r["embedding"]) for r in rows] == [
        ("c0", 0, [0.0, 1.0]), ("c0", 1, [1.0, 0.0]), ("c1", 0, [0.5, 0.25])]


def test_parts_of_mixed_widths_keep_each_vector_whole(tmp_path):
    prefix = resolve(str(tmp_path), StorageConfig())
    write_embeddings(prefix, 0, [_result(0, 0, [1, 2, 3]), _result(1, 0, [4, 5])])
    assert [r["embedding"] for r in pq.read_table(tmp_path / "part-00000.parquet").to_pylist()] == [[1, 2, 3], [4, 5]]


def test_bodies_are_openai_embedding_responses_in_float_or_base64():
    vector = np.array([0.1, -0.2, 0.3], np.float32)
    rows = [{"custom_id": "a", "row_index": 0, "input_index": i, "embedding": vector.tolist(), "tokens": 4,
             "encoding_format": "float"} for i in range(2)]
    rows.append({"custom_id": "b", "row_index": 1, "input_index": 0, "embedding": vector.tolist(), "tokens": 5,
                 "encoding_format": "base64"})
    (a_id, a), (b_id, b) = embedding_bodies(rows, "all-minilm-l6-v2")
    assert (a_id, b_id) == ("a", "b")
    assert a["object"] == "list" and a["model"] == "all-minilm-l6-v2"
    assert a["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    assert [(d["object"], d["index"]) for d in a["data"]] == [("embedding", 0), ("embedding", 1)]
    assert a["data"][0]["embedding"] == vector.tolist()
    decoded = np.frombuffer(base64.b64decode(b["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, vector)
