"""One input row of an embedding job -> the inputs to embed with their parameters, or an error row naming the reason.

Row forms: OpenAI batch lines to `/v1/embeddings` (`body.input` a string, a list of strings, a token-id list or a
list of those; `encoding_format`, `dimensions`, `user`, and Tide's `truncate`), and native rows `{"id": ...,
"input": ..., "dimensions"?, "truncate"?}` (Parquet rows mapped to the same form through the job's columns).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tide.engine.embeddings import EmbedParams
from tide.jobs.batch_lines import BATCH_KEYS, check_model, line_envelope
from tide.jobs.endpoints import EMBEDDINGS_URL
from tide.jobs.messages import RowError
from tide.jobs.rows import ErrorRow, row_error, row_id

ENCODING_FORMATS = ("float", "base64")
MAX_INPUTS = 2048  # OpenAI's limit on one request's list of inputs
_PARAM_KEYS = set(EmbedParams.model_fields)
_BODY_KEYS = {"input", "model", "encoding_format", "user"} | _PARAM_KEYS
_NATIVE_KEYS = {"id", "custom_id", "input"} | _PARAM_KEYS

Inputs = list[str] | list[list[int]]


@dataclass(frozen=True)
class EmbedRow:
    row: int  # 0-based index among the file's rows
    custom_id: str
    prompt: Inputs  # the inputs, one vector each; what the engine is handed (one request per row)
    params: EmbedParams
    encoding_format: str = "float"  # how an OpenAI output line carries the vectors


def parse_embedding_row(raw: Any, row: int, endpoint: str | None = None, models: frozenset[str] = frozenset()
                        ) -> EmbedRow | ErrorRow:
    """A decoded row -> EmbedRow or ErrorRow; never raises for bad input. With `endpoint` (an OpenAI batch), every
    row must be a batch line to it whose `body.model`, if given, is among `models`."""
    if not isinstance(raw, dict):
        return row_error(row, None, "invalid_row", "a row must be a JSON object")
    custom_id = row_id(raw, row)
    try:
        if endpoint is not None or BATCH_KEYS & (set(raw) - {"custom_id"}):
            fields, where = _batch_body(raw, endpoint, models), "body."
        else:
            if "prompt" in raw or "messages" in raw:
                raise RowError("invalid_field", "this job embeds (task embed): give the text as input, not prompt "
                               "or messages (a Parquet column maps to input through the job's columns)", "input")
            _known(raw, _NATIVE_KEYS, "")
            fields, where = raw, ""
        inputs = _inputs(fields.get("input"), where)
        params = _params({k: v for k, v in fields.items() if k in _PARAM_KEYS}, where)
        encoding = fields.get("encoding_format", "float")
        if encoding not in ENCODING_FORMATS:
            raise RowError("invalid_field", f"encoding_format must be float or base64, got {encoding!r}",
                           where + "encoding_format")
    except RowError as exc:
        return row_error(row, custom_id, exc.code, str(exc), exc.param)
    return EmbedRow(row, custom_id, inputs, params, encoding)


def _batch_body(raw: dict, endpoint: str | None, models: frozenset[str]) -> dict:
    """The body of a batch line, checked as jobs/rows.py checks a generation line (the same codes)."""
    url, body = line_envelope(raw, endpoint, EMBEDDINGS_URL)
    if url != EMBEDDINGS_URL:
        raise RowError("invalid_field", f"url must be {EMBEDDINGS_URL} in a job that embeds (task embed), got "
                       f"{url!r}", "url")
    if not isinstance(body, dict):
        raise RowError("missing_body", "batch line has no body object", "body")
    check_model(body, models)
    _known(body, _BODY_KEYS, "body.")
    return body


def _inputs(value: Any, where: str) -> Inputs:
    """A string, a list of strings, a token-id list or a list of those -> the list of inputs."""
    param = where + "input"
    if value is None:
        raise RowError("missing_input", "row has no input (the text to embed; prompt and messages are for jobs "
                       "that generate)", param)
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RowError("invalid_field", "input must be a string, a list of strings, a token-id list or a list of "
                       "those, and not empty", param)
    if len(value) > MAX_INPUTS:
        raise RowError("invalid_field", f"input holds {len(value)} items; at most {MAX_INPUTS}", param)
    texts = isinstance(value[0], str)  # the first item sets the kind; a list mixes no strings with token lists
    for i, item in enumerate(value):
        if texts and not isinstance(item, str):
            raise RowError("invalid_field", f"input[{i}] must be a string like input[0]; a list mixes no strings "
                           "with token lists", f"{param}[{i}]")
        if texts and not item:
            raise RowError("invalid_field", f"input[{i}] is an empty string", f"{param}[{i}]")
        if not texts and not _token_ids(item):
            raise RowError("invalid_field", f"input[{i}] must be a non-empty list of token ids (integers >= 0) like "
                           "input[0]; a list mixes no strings with token lists", f"{param}[{i}]")
    return value


def _token_ids(item: Any) -> bool:
    return (isinstance(item, list) and bool(item)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in item))


def _params(fields: dict[str, Any], where: str) -> EmbedParams:
    try:
        return EmbedParams(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(map(str, first["loc"]))
        raise RowError("invalid_field", f"{name}: {first['msg']}", where + name) from exc


def _known(raw: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RowError("unknown_field", f"unknown field(s) {', '.join(unknown)}", where + unknown[0])
