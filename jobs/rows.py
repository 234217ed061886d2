"""One input row -> a prompt with its sampling parameters, or an error row naming the reason.

Row forms: OpenAI batch lines (`custom_id`, `method`, `url`, `body`; the body read per endpoint by batch_lines.py),
plain rows (`prompt` or `messages`, optional `id`, optional SamplingParams fields as per-row overrides), and Parquet
rows mapped to the same plain form. A `prompt` is text or, as OpenAI's completions accept, a list of token ids.
"""
from __future__ import annotations

import codecs
import functools
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tide.engine.sampling_params import SamplingParams
from tide.jobs.batch_lines import BATCH_KEYS, check_model, line_envelope, parse_body
from tide.jobs.endpoints import CHAT_URL, GENERATION_ENDPOINTS
from tide.jobs.messages import Prompt, RowError, prompt_from

_SAMPLING_KEYS = set(SamplingParams.model_fields)
_PLAIN_KEYS = {"id", "custom_id", "prompt", "messages"} | _SAMPLING_KEYS
# Errors that make an OpenAI batch's file invalid, as OpenAI's validation finds them: the batch fails before any
# request runs, with these in `errors.data`. Other error rows fail their request alone (the error file).
BATCH_FILE_ERRORS = frozenset({"invalid_json", "invalid_row", "line_too_long", "unknown_line_field",
                               "missing_custom_id", "missing_body", "invalid_method", "invalid_url",
                               "mismatched_url", "unsupported_endpoint", "mismatched_model", "unsupported_field",
                               "duplicate_custom_id"})


@dataclass(frozen=True)
class PromptRow:
    row: int  # 0-based index among the file's rows (JSONL: line number - 1)
    custom_id: str
    prompt: Prompt
    params: SamplingParams
    echo: str | None = None  # request fields an OpenAI response carries back (JSON text), for /v1/responses lines


@dataclass(frozen=True)
class ErrorRow:
    row: int
    custom_id: str | None
    code: str
    message: str
    param: str | None = None  # the field at fault, where one is

    @property
    def line(self) -> int:
        return self.row + 1


def row_error(row: int, custom_id: str | None, code: str, reason: str, param: str | None = None) -> ErrorRow:
    """The one way an error row is made: its message names the line (and the id, once known) before the reason."""
    where = f"line {row + 1}" if custom_id is None else f"line {row + 1} (id {custom_id})"
    return ErrorRow(row, custom_id, code, f"{where}: {reason}", param)


def default_id(row: int) -> str:
    return f"row-{row}"


def parse_json_line(line: bytes, row: int, defaults: dict[str, Any], endpoint: str | None = None,
                    models: frozenset[str] = frozenset()) -> PromptRow | ErrorRow:
    """A JSONL line (UTF-8, as JSON Lines are) -> PromptRow or ErrorRow."""
    raw = decode_line(line, row)
    return raw if isinstance(raw, ErrorRow) else parse_row(raw, row, defaults, endpoint, models)


def decode_line(line: bytes, row: int) -> Any | ErrorRow:
    """A JSONL line's value, or the error row saying why it is not JSON."""
    try:
        # Decoded here rather than by json.loads, which would first guess among UTF-8/16/32 on every line.
        return json.loads(line.decode("utf-8-sig" if line.startswith(codecs.BOM_UTF8) else "utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return row_error(row, None, "invalid_json", f"not valid JSON ({exc})")
    except RecursionError:
        return row_error(row, None, "invalid_json", "JSON nested too deeply")


def parse_row(raw: Any, row: int, defaults: dict[str, Any], endpoint: str | None = None,
              models: frozenset[str] = frozenset()) -> PromptRow | ErrorRow:
    """A decoded row (dict) -> PromptRow or ErrorRow; never raises for bad input.

    With `endpoint` (an OpenAI batch), every row must be a batch line whose `url` is that endpoint and whose
    `body.model`, if given, is among `models`.
    """
    if not isinstance(raw, dict):
        return row_error(row, None, "invalid_row", "a row must be a JSON object")
    custom_id = row_id(raw, row)
    echo = None
    try:
        if endpoint is not None or BATCH_KEYS & (set(raw) - {"custom_id"}):
            prompt, overrides, echo = _batch_line(raw, endpoint, models)
        else:
            prompt, overrides = _plain_row(raw)
        params = _params(defaults, overrides)
    except RowError as exc:
        return row_error(row, custom_id, exc.code, str(exc), exc.param)
    return PromptRow(row, custom_id, prompt, params, None if not echo else json.dumps(echo, ensure_ascii=False))


def fails_batch(error: ErrorRow) -> bool:
    """Whether this error makes an OpenAI batch's file invalid (rather than failing its request alone)."""
    return error.code in BATCH_FILE_ERRORS


def row_id(raw: dict, row: int) -> str:
    """The row's id (`custom_id`, else `id`, else `row-<index>`) as a string."""
    value = raw.get("custom_id", raw.get("id"))
    return default_id(row) if value is None else str(value)


def _batch_line(raw: dict, endpoint: str | None, models: frozenset[str]) -> tuple[Prompt, dict, dict | None]:
    url, body = line_envelope(raw, endpoint, CHAT_URL)
    if url not in GENERATION_ENDPOINTS:
        raise RowError("invalid_field", f"url must be one of {', '.join(GENERATION_ENDPOINTS)} in a job that "
                       f"generates, got {url!r} (embeddings lines go in a job with task embed)", "url")
    if not isinstance(body, dict):
        raise RowError("missing_body", "batch line has no body object", "body")
    adapter = check_model(body, models)
    line = parse_body(url, body)
    if adapter is not None:
        if line.overrides.get("lora") not in (None, adapter):
            raise RowError("invalid_field", f"model names adapter {adapter!r} but lora is "
                           f"{line.overrides['lora']!r}; give one", "body.lora")
        line.overrides["lora"] = adapter
    return line.prompt, line.overrides, line.echo


def _plain_row(raw: dict) -> tuple[Prompt, dict[str, Any]]:
    _no_unknown(raw, _PLAIN_KEYS)
    overrides = {k: v for k, v in raw.items() if k in _SAMPLING_KEYS}
    return prompt_from(raw), overrides


@functools.lru_cache(maxsize=64)
def _default_params(defaults: tuple) -> SamplingParams:
    return SamplingParams(**{key: _thawed(value) for key, value in defaults})


def _frozen(value: Any) -> Any:
    """A hashable twin of a JSON value (dicts as sorted item tuples, lists as tuples), to key the cache above."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("__list__", tuple(_frozen(v) for v in value))
    return value


def _defaults_key(defaults: dict[str, Any]) -> tuple:
    """`_frozen(defaults)`, without the walk when every value is already hashable (the common case, per row)."""
    key = tuple(sorted(defaults.items()))
    try:
        hash(key)
    except TypeError:
        return _frozen(defaults)
    return key


def _thawed(value: Any) -> Any:
    if isinstance(value, tuple) and value[:1] == ("__list__",):
        return [_thawed(v) for v in value[1]]
    if isinstance(value, tuple):
        return {k: _thawed(v) for k, v in value}
    return value


def _no_unknown(raw: dict, known: set[str], where: str = "") -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RowError("unknown_field", f"unknown field(s) {', '.join(unknown)}", where + unknown[0])


def _params(defaults: dict[str, Any], overrides: dict[str, Any]) -> SamplingParams:
    try:
        if not overrides:  # most rows of a job: its defaults, validated once (SamplingParams is frozen)
            return _default_params(_defaults_key(defaults))
        return SamplingParams(**{**defaults, **overrides})
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        first = ".".join(map(str, exc.errors()[0]["loc"])) if exc.errors() else None
        raise RowError("invalid_field", f"bad sampling parameter ({fields})", first) from exc
