"""One input row -> a prompt with its sampling parameters, or an error row naming the reason.

Row forms: OpenAI batch lines (`custom_id`, `method`, `url`, `body`), plain rows (`prompt` or `messages`, optional
`id`, optional SamplingParams fields as per-row overrides), and Parquet rows mapped to the same plain form. A
`prompt` is text or, as OpenAI's completions accept, a list of token ids.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Union

from pydantic import ValidationError

from tide.engine.decoding.guided_params import ANY_JSON_OBJECT
from tide.engine.sampling_params import SamplingParams

Prompt = Union[str, list[dict], list[int]]

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
_BATCH_KEYS = {"custom_id", "method", "url", "body"}
_SAMPLING_KEYS = set(SamplingParams.model_fields)
_PLAIN_KEYS = {"id", "custom_id", "prompt", "messages"} | _SAMPLING_KEYS
# OpenAI body fields that map onto SamplingParams under another name, are converted below, or carry no sampling
# meaning here.
_BODY_RENAMES = {"max_completion_tokens": "max_tokens"}
_BODY_IGNORED = {"model", "user", "stream", "top_logprobs", "logprobs", "response_format"}
_ROLES = {"system", "user", "assistant", "tool", "developer"}


@dataclass(frozen=True)
class PromptRow:
    row: int  # 0-based index among the file's rows (JSONL: line number - 1)
    custom_id: str
    prompt: Prompt
    params: SamplingParams


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


class RowError(ValueError):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


def default_id(row: int) -> str:
    return f"row-{row}"


def parse_json_line(line: bytes, row: int, defaults: dict[str, Any], endpoint: str | None = None
                    ) -> PromptRow | ErrorRow:
    """A JSONL line -> PromptRow or ErrorRow."""
    try:
        raw = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return row_error(row, None, "invalid_json", f"not valid JSON ({exc})")
    except RecursionError:
        return row_error(row, None, "invalid_json", "JSON nested too deeply")
    return parse_row(raw, row, defaults, endpoint)


def parse_row(raw: Any, row: int, defaults: dict[str, Any], endpoint: str | None = None) -> PromptRow | ErrorRow:
    """A decoded row (dict) -> PromptRow or ErrorRow; never raises for bad input.

    With `endpoint` (an OpenAI batch), every row must be a batch line whose `url` is that endpoint.
    """
    if not isinstance(raw, dict):
        return row_error(row, None, "invalid_row", "a row must be a JSON object")
    custom_id = row_id(raw, row)
    try:
        if endpoint is not None or _BATCH_KEYS & (set(raw) - {"custom_id"}):
            prompt, overrides = _batch_line(raw, endpoint)
        else:
            prompt, overrides = _plain_row(raw)
        params = _params(defaults, overrides)
    except RowError as exc:
        return row_error(row, custom_id, exc.code, str(exc), exc.param)
    return PromptRow(row, custom_id, prompt, params)


def row_id(raw: dict, row: int) -> str:
    """The row's id (`custom_id`, else `id`, else `row-<index>`) as a string."""
    value = raw.get("custom_id", raw.get("id"))
    return default_id(row) if value is None else str(value)


def _batch_line(raw: dict, endpoint: str | None) -> tuple[Prompt, dict[str, Any]]:
    _no_unknown(raw, _BATCH_KEYS)
    if "custom_id" not in raw:
        raise RowError("missing_field", "batch line has no custom_id", "custom_id")
    if raw.get("method", "POST") != "POST":
        raise RowError("invalid_field", f"method must be POST, got {raw.get('method')!r}", "method")
    url, body = raw.get("url", endpoint or CHAT_URL), raw.get("body")
    if url not in (CHAT_URL, COMPLETIONS_URL):
        raise RowError("invalid_field", f"url must be {CHAT_URL} or {COMPLETIONS_URL}, got {url!r}", "url")
    if endpoint is not None and url != endpoint:
        raise RowError("mismatched_url", f"url {url!r} is not the batch's endpoint {endpoint!r}", "url")
    if not isinstance(body, dict):
        raise RowError("missing_field", "batch line has no body object", "body")
    prompt_key = "messages" if url == CHAT_URL else "prompt"
    _no_unknown(body, {prompt_key} | _SAMPLING_KEYS | set(_BODY_RENAMES) | _BODY_IGNORED, "body.")
    overrides = {_BODY_RENAMES.get(k, k): v for k, v in body.items()
                 if k != prompt_key and k not in _BODY_IGNORED}
    overrides.update(_openai_logprobs(body, chat=url == CHAT_URL))
    guided = _openai_response_format(body.get("response_format"))
    if guided is not None:
        if "guided" in overrides:
            raise RowError("invalid_field", "give response_format or guided, not both", "body.response_format")
        overrides["guided"] = guided
    return _prompt_from({prompt_key: body.get(prompt_key)}), overrides


def _openai_logprobs(body: dict, chat: bool) -> dict[str, Any]:
    """Chat asks `logprobs: true` + `top_logprobs: k`; completions ask `logprobs: k`."""
    if chat:
        if not body.get("logprobs"):
            return {}
        return {"logprobs": body.get("top_logprobs") or 0}
    return {} if body.get("logprobs") is None else {"logprobs": body["logprobs"]}


def _openai_response_format(response_format: Any) -> dict[str, Any] | None:
    """`response_format` -> the `guided` parameter: json_schema constrains to its schema (always strictly),
    json_object to any JSON object, text (or none) to nothing."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_schema": ANY_JSON_OBJECT}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RowError("invalid_field", "response_format.json_schema.schema must be a JSON schema object",
                           "body.response_format.json_schema.schema")
        return {"json_schema": schema}
    raise RowError("invalid_field", f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                   "body.response_format.type")


def _plain_row(raw: dict) -> tuple[Prompt, dict[str, Any]]:
    _no_unknown(raw, _PLAIN_KEYS)
    overrides = {k: v for k, v in raw.items() if k in _SAMPLING_KEYS}
    return _prompt_from(raw), overrides


def _prompt_from(raw: dict) -> Prompt:
    prompt, messages = raw.get("prompt"), raw.get("messages")
    if prompt is not None and messages is not None:
        raise RowError("invalid_field", "row has both prompt and messages; give one", "messages")
    if messages is not None:
        return _messages(messages)
    if prompt is None:
        raise RowError("missing_prompt", "row has no prompt or messages", "prompt")
    if _token_ids(prompt):  # as OpenAI's completions take them: the tokens exactly, no tokenizer in between
        return list(prompt)
    if not isinstance(prompt, str) or not prompt:
        raise RowError("invalid_field", "prompt must be a non-empty string or list of token ids", "prompt")
    return prompt


def _token_ids(prompt: Any) -> bool:
    return (isinstance(prompt, list) and bool(prompt)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt))


def _messages(messages: Any) -> list[dict]:
    if isinstance(messages, str):  # Parquet columns may hold messages as a JSON string
        try:
            messages = json.loads(messages)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise RowError("invalid_field", f"messages is not valid JSON ({exc})", "messages") from exc
    if not isinstance(messages, list) or not messages:
        raise RowError("invalid_field", "messages must be a non-empty list of {role, content} objects", "messages")
    return [_message(m, i) for i, m in enumerate(messages)]


def _message(message: Any, index: int) -> dict:
    if not isinstance(message, dict) or message.get("role") not in _ROLES:
        raise RowError("invalid_field", f"messages[{index}] needs a role among {sorted(_ROLES)}",
                       f"messages[{index}].role")
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str):
        raise RowError("invalid_field", f"messages[{index}].content must be a string or text parts",
                       f"messages[{index}].content")
    return {"role": message["role"], "content": content}


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
            return _default_params(_frozen(defaults))
        return SamplingParams(**{**defaults, **overrides})
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        first = ".".join(map(str, exc.errors()[0]["loc"])) if exc.errors() else None
        raise RowError("invalid_field", f"bad sampling parameter ({fields})", first) from exc
