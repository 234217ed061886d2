"""Prompts and chat messages as rows give them, and `RowError`, what a bad field of a row raises.

Only text reaches the engine: a content part Tide cannot read (an image, audio, a file) or a message field it would
have to drop (a name, tool calls) is refused by name, never silently left out.
"""
from __future__ import annotations

import json
from typing import Any, Union

Prompt = Union[str, list[dict], list[int]]

ROLES = ("system", "developer", "user", "assistant")
# Content part types that carry text: chat's `text`, the Responses API's `input_text` and `output_text`.
TEXT_PARTS = ("text", "input_text", "output_text")


class RowError(ValueError):
    """A row's field Tide cannot take. `code` classifies it (rows.py says which codes fail a whole batch)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


def unsupported(param: str, what: str) -> RowError:
    return RowError("unsupported_field", f"{param}: {what} is not supported by Tide", param)


def prompt_from(raw: dict, where: str = "") -> Prompt:
    """The row's `prompt` (a non-empty string or list of token ids) or `messages` (a non-empty list), exactly one."""
    prompt, messages = raw.get("prompt"), raw.get("messages")
    if prompt is not None and messages is not None:
        raise RowError("invalid_field", "row has both prompt and messages; give one", where + "messages")
    if messages is not None:
        return chat_messages(messages, where + "messages")
    if prompt is None:
        raise RowError("missing_prompt", "row has no prompt or messages", where + "prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return token_ids(prompt, where + "prompt")
    if isinstance(prompt, list) and prompt:
        raise unsupported(where + "prompt", "a list of prompts (one prompt per request)")
    if not isinstance(prompt, str) or not prompt:
        raise RowError("invalid_field", "prompt must be a non-empty string or list of token ids", where + "prompt")
    return prompt


def token_ids(prompt: list, where: str) -> list[int]:
    """A prompt of token ids, as OpenAI's completions take them: the tokens exactly, no tokenizer in between."""
    if any(isinstance(t, bool) or t < 0 for t in prompt):
        raise RowError("invalid_field", f"{where} must be a non-empty string or list of token ids (integers >= 0)",
                       where)
    return list(prompt)


def chat_messages(messages: Any, where: str) -> list[dict]:
    """`[{role, content}, ...]` (content a string or text parts) -> the engine's `[{role, content: str}]`."""
    if isinstance(messages, str):  # Parquet columns may hold messages as a JSON string
        try:
            messages = json.loads(messages)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise RowError("invalid_field", f"{where} is not valid JSON ({exc})", where) from exc
    if not isinstance(messages, list) or not messages:
        raise RowError("invalid_field", f"{where} must be a non-empty list of {{role, content}} objects", where)
    return [message(m, f"{where}[{i}]") for i, m in enumerate(messages)]


def message(item: Any, where: str, extra: tuple[str, ...] = ()) -> dict:
    """One message; `extra` names keys accepted and ignored (the Responses API's `type: message`)."""
    if not isinstance(item, dict):
        raise RowError("invalid_field", f"{where} must be a {{role, content}} object", where)
    role = item.get("role")
    if role in ("tool", "function"):
        raise unsupported(f"{where}.role", f"role {role!r} (tool calling)")
    if role not in ROLES:
        raise RowError("invalid_field", f"{where} needs a role among {', '.join(ROLES)}", f"{where}.role")
    for key, value in item.items():
        if key not in ("role", "content", *extra) and value is not None:
            raise unsupported(f"{where}.{key}", f"the message field {key!r}")
    return {"role": role, "content": content_text(item.get("content"), f"{where}.content")}


def content_text(content: Any, where: str) -> str:
    """A string, or a list of text parts joined; any other part is refused by its type."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RowError("invalid_field", f"{where} must be a string or a list of text parts", where)
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS:
            if isinstance(kind, str):
                raise unsupported(f"{where}[{i}].type", f"content part type {kind!r} (only text reaches the model)")
            raise RowError("invalid_field", f"{where}[{i}] must be a {{type, text}} object", f"{where}[{i}]")
        if not isinstance(part.get("text"), str):
            raise RowError("invalid_field", f"{where}[{i}].text must be a string", f"{where}[{i}].text")
        texts.append(part["text"])
    return "".join(texts)
