"""Validation against the official client's own types, strictly: the `openai` models accept unknown fields, so a
field OpenAI's shape does not have is caught here by walking the validated model for extras."""
from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)


def strictly(model: type[T], data: dict) -> T:
    """`model.model_validate(data)`, failing on any field the client's type does not declare."""
    value = model.model_validate(data)
    extras = list(_extras(value, model.__name__))
    assert not extras, f"fields {model.__name__} does not have: {extras}"
    return value


def _extras(value, where: str):
    if isinstance(value, BaseModel):
        for name in value.model_extra or {}:
            yield f"{where}.{name}"
        for name in type(value).model_fields:
            yield from _extras(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _extras(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _extras(item, f"{where}.{key}")
