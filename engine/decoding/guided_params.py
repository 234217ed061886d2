"""What a request asks its output to match: a JSON schema, a regular expression, or one of fixed strings.

Only the shape of the request is checked here; the grammar itself is compiled (and a bad schema or regex reported)
by the engine when it admits the request, so this module needs no grammar library.
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# OpenAI's `{"type": "json_object"}`: any JSON object.
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


class GuidedParams(BaseModel):
    """Exactly one of `json_schema`, `regex` or `choice`.

    `fast_forward` appends the tokens the grammar forces (e.g. a fixed key) without a decode step each; the output
    is the same either way, so it is only worth turning off to measure it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    json_schema: dict[str, Any] | None = None
    regex: str | None = Field(None, min_length=1)
    choice: list[str] | None = Field(None, min_length=1)
    fast_forward: bool = True

    @field_validator("choice")
    @classmethod
    def _choices_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(c == "" for c in value):
            raise ValueError("choices must be non-empty strings")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> "GuidedParams":
        given = [name for name in ("json_schema", "regex", "choice") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of json_schema, regex, choice (got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        """The constraint's field name: json_schema, regex or choice."""
        return next(name for name in ("json_schema", "regex", "choice") if getattr(self, name) is not None)

    def cache_key(self) -> str:
        """Identifies the grammar. Key order counts: a schema's properties come out in the order it lists them."""
        return json.dumps([self.kind, getattr(self, self.kind)], ensure_ascii=False)
