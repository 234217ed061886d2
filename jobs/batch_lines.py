"""An OpenAI batch line's body -> the prompt, SamplingParams overrides and the request fields its response echoes.

Every body field of each endpoint falls in one group: mapped onto SamplingParams (under its own name or renamed),
accepted and ignored as a hosted batch ignores it (`store`, `service_tier`, `user`, `metadata`, ...), refused because
Tide cannot honour it (`tools`, `logit_bias`, ...: the batch fails at validation naming the line and the field,
unless the value asks for nothing, like `tools: []`), or unknown (that request alone fails with a 400, as OpenAI's
endpoint answers it). Tide's own SamplingParams fields (`top_k`, `guided`, ...) are accepted as extensions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tide.engine.decoding.guided_params import ANY_JSON_OBJECT
from tide.engine.sampling_params import SamplingParams
from tide.jobs.endpoints import CHAT_URL, COMPLETIONS_URL, RESPONSES_URL, UnsupportedEndpoint, check_endpoint
from tide.jobs.messages import Prompt, RowError, chat_messages, message, prompt_from, unsupported
from tide.jobs.models import split_model

_SAMPLING = frozenset(SamplingParams.model_fields)
_IGNORED = frozenset({"model", "store", "service_tier", "user", "metadata", "prompt_cache_key", "safety_identifier",
                      "stream", "stream_options"})
_TOOLS = {"tools": "tool calling", "tool_choice": "tool calling", "parallel_tool_calls": "tool calling"}
# field -> (what it is, values that ask for nothing and are accepted)
_CHAT_REFUSED: dict[str, tuple[str, tuple]] = {
    **{k: (v, ("none",)) for k, v in _TOOLS.items()}, "functions": ("function calling", ()),
    "function_call": ("function calling", ("none",)), "logit_bias": ("logit_bias", ()),
    "audio": ("audio output", ()), "modalities": ("output modalities other than text", (["text"],)),
    "prediction": ("predicted outputs", ()), "reasoning_effort": ("reasoning effort", ()),
    "verbosity": ("verbosity", ()), "web_search_options": ("web search", ())}
_COMPLETIONS_REFUSED: dict[str, tuple[str, tuple]] = {
    "logit_bias": ("logit_bias", ()), "echo": ("echo (the prompt in the output)", ()),
    "suffix": ("suffix (insertion)", ("",)), "best_of": ("best_of without use_beam_search", (1,))}
_RESPONSES_REFUSED: dict[str, tuple[str, tuple]] = {
    **{k: (v, ("none",)) for k, v in _TOOLS.items()}, "reasoning": ("reasoning options", ()),
    "previous_response_id": ("previous_response_id (stored conversations)", ()),
    "conversation": ("conversations", ()), "prompt": ("prompt templates", ()),
    "include": ("include (extra output items)", ()), "top_logprobs": ("logprobs on /v1/responses", (0,)),
    "max_tool_calls": ("tool calling", ()), "background": ("background mode", ()),
    "truncation": ("truncation other than 'disabled'", ("disabled",))}
_CHAT_TIDE = _SAMPLING - {"logprobs"}  # chat asks logprobs: true with top_logprobs: k
_RESPONSES_TIDE = _SAMPLING - {"n", "logprobs", "max_tokens", "use_beam_search", "best_of", "length_penalty",
                               "early_stopping"}  # one output per response


@dataclass
class Line:
    """What a batch line asks for, before SamplingParams validate it."""

    prompt: Prompt
    overrides: dict[str, Any] = field(default_factory=dict)
    echo: dict[str, Any] | None = None  # request fields a Response object carries back


BATCH_KEYS = frozenset({"custom_id", "method", "url", "body"})


def line_envelope(raw: dict, endpoint: str | None, default_url: str) -> tuple[str, object]:
    """A batch line's `url` and `body`, after the checks every endpoint shares: no unknown line field, a
    `custom_id`, POST, an endpoint Tide knows, and the batch's own endpoint (when it has one)."""
    unknown = sorted(set(raw) - BATCH_KEYS)
    if unknown:
        raise RowError("unknown_line_field", f"unknown field(s) {', '.join(unknown)}", unknown[0])
    if "custom_id" not in raw:
        raise RowError("missing_custom_id", "batch line has no custom_id", "custom_id")
    if raw.get("method", "POST") != "POST":
        raise RowError("invalid_method", f"method must be POST, got {raw.get('method')!r}", "method")
    url = raw.get("url", endpoint or default_url)
    try:
        check_endpoint(url)
    except UnsupportedEndpoint as exc:
        code = "unsupported_endpoint" if isinstance(url, str) and url.startswith("/v1/") else "invalid_url"
        raise RowError(code, str(exc), "url") from None
    if endpoint is not None and url != endpoint:
        raise RowError("mismatched_url", f"url {url!r} is not the batch's endpoint {endpoint!r}", "url")
    return url, raw.get("body")


def parse_body(url: str, body: dict) -> Line:
    """The body of a line to `url` (one of the batch endpoints)."""
    if url == CHAT_URL:
        return _chat(body)
    if url == COMPLETIONS_URL:
        return _completions(body)
    assert url == RESPONSES_URL, url
    return _responses(body)


def check_model(body: dict, models: frozenset[str]) -> str | None:
    """A batch runs one model: a line naming another fails validation (`mismatched_model`). Returns the LoRA
    adapter a `base:adapter` model names, if any."""
    model = body.get("model")
    if model is None:
        return None
    if not isinstance(model, str) or not model:
        raise RowError("invalid_field", "body.model must be a model name", "body.model")
    base, adapter = split_model(model)
    if models and model not in models and base not in models:
        raise RowError("mismatched_model", f"body.model {model!r} is not the batch's model "
                       f"({' or '.join(sorted(map(repr, models)))}); a batch runs one model", "body.model")
    return adapter


def _chat(body: dict) -> Line:
    _check_fields(body, {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "response_format"},
                  _CHAT_REFUSED, tide=_CHAT_TIDE)
    overrides = _tide_fields(body, _CHAT_TIDE)
    if "max_completion_tokens" in body:
        overrides["max_tokens"] = body["max_completion_tokens"]
    if body.get("logprobs"):
        overrides["logprobs"] = body.get("top_logprobs") or 0
    elif body.get("top_logprobs"):
        raise RowError("invalid_field", "top_logprobs needs logprobs: true", "body.top_logprobs")
    _add_guided(overrides, _response_format(body.get("response_format"), "body.response_format"))
    if "messages" not in body:
        raise RowError("missing_prompt", "body has no messages", "body.messages")
    return Line(chat_messages(body["messages"], "body.messages"), overrides)


def _completions(body: dict) -> Line:
    refused = dict(_COMPLETIONS_REFUSED)
    if body.get("use_beam_search"):
        refused.pop("best_of")  # Tide's beam search takes best_of as the beam width
    _check_fields(body, {"prompt"}, refused)
    overrides = {k: v for k, v in _tide_fields(body, _SAMPLING).items() if v is not None or k != "logprobs"}
    if not body.get("use_beam_search"):
        overrides.pop("best_of", None)  # only a value that asks for nothing got this far
    return Line(prompt_from({"prompt": body.get("prompt")}, "body."), overrides)


def _responses(body: dict) -> Line:
    _check_fields(body, {"input", "instructions", "max_output_tokens", "text"}, _RESPONSES_REFUSED,
                  tide=_RESPONSES_TIDE)
    overrides = _tide_fields(body, _RESPONSES_TIDE)
    if "max_output_tokens" in body:
        overrides["max_tokens"] = body["max_output_tokens"]
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise RowError("invalid_field", "body.text must be an object", "body.text")
        _check_harmless(text, "body.text.", {"verbosity": ("verbosity", ())}, known={"format"})
        _add_guided(overrides, _response_format(text.get("format"), "body.text.format", flat=True))
    messages = _response_input(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise RowError("invalid_field", "body.instructions must be a string", "body.instructions")
        messages.insert(0, {"role": "system", "content": instructions})
    echo = {k: body[k] for k in ("instructions", "max_output_tokens", "metadata", "temperature", "top_p", "text")
            if body.get(k) is not None}
    return Line(messages, overrides, echo)


def _response_input(value: Any) -> list[dict]:
    if isinstance(value, str) and value:
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RowError("missing_prompt" if value is None else "invalid_field",
                       "body.input must be a non-empty string or list of messages", "body.input")
    items = []
    for i, item in enumerate(value):
        kind = item.get("type", "message") if isinstance(item, dict) else "message"
        if kind != "message":
            raise unsupported(f"body.input[{i}].type", f"input item type {kind!r}")
        items.append(message(item, f"body.input[{i}]", extra=("type", "id", "status")))
    return items


def _check_fields(body: dict, own: set[str], refused: dict[str, tuple[str, tuple]],
                  tide: frozenset[str] = _SAMPLING) -> None:
    """Refuse what Tide cannot honour (a batch error), then what no endpoint knows (a request error)."""
    _check_harmless(body, "body.", refused, known=own | tide | _IGNORED)
    if body.get("stream"):
        raise unsupported("body.stream", "streaming (a batch answers each request whole)")


def _check_harmless(body: dict, where: str, refused: dict[str, tuple[str, tuple]], known: set[str]) -> None:
    for key, value in body.items():
        if key in refused:
            what, harmless = refused[key]
            if value not in (None, False, [], {}) and value not in harmless:
                raise unsupported(where + key, what)
        elif key not in known:
            raise RowError("unknown_field", f"unknown field {where}{key}", where + key)


def _tide_fields(body: dict, names: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k in names}


def _add_guided(overrides: dict[str, Any], guided: dict[str, Any] | None) -> None:
    if guided is None:
        return
    if "guided" in overrides:
        raise RowError("invalid_field", "give response_format (or text.format) or guided, not both", "body.guided")
    overrides["guided"] = guided


def _response_format(value: Any, where: str, flat: bool = False) -> dict[str, Any] | None:
    """`response_format` (chat) or `text.format` (responses, the schema's fields `flat` beside `type`) -> `guided`:
    json_schema constrains to its schema, strictly with `strict: true` and leniently otherwise (keywords the grammar
    cannot enforce are skipped, as OpenAI's non-strict mode is best-effort); json_object to any object; text to
    nothing."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_schema": ANY_JSON_OBJECT}
    if kind != "json_schema":
        raise RowError("invalid_field", f"{where}.type must be text, json_object or json_schema, got {kind!r}",
                       f"{where}.type")
    spec = value if flat else value.get("json_schema")
    inner = where if flat else f"{where}.json_schema"
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise RowError("invalid_field", f"{inner}.schema must be a JSON schema object", f"{inner}.schema")
    if spec.get("strict") is not True:
        options = schema.get("x-guidance") if isinstance(schema.get("x-guidance"), dict) else {}
        schema = {**schema, "x-guidance": {"lenient": True, **options}}
    return {"json_schema": schema}

