"""Model names as requests give them: aliases, the served model a name runs on, and refusing names nobody serves.

`served_model` is the one place a request's `model` is read; other name forms (adapters, say) extend it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping


class UnservedModel(ValueError):
    """A model no live worker serves and no alias maps to one; the message names it and lists the served ones."""


def parse_aliases(value: str | Mapping[str, str] | None) -> dict[str, str]:
    """`TIDE_MODEL_ALIASES`: a JSON object, or `name=target` pairs separated by commas -> {name: target}."""
    if value is None or isinstance(value, Mapping):
        aliases = dict(value or {})
    elif value.strip().startswith("{"):
        aliases = json.loads(value)
    else:
        aliases = {}
        for pair in filter(None, (p.strip() for p in value.split(","))):
            name, sep, target = pair.partition("=")
            if not sep or not name.strip() or not target.strip():
                raise ValueError(f"model alias {pair!r} is not name=target")
            aliases[name.strip()] = target.strip()
    if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in aliases.items()):
        raise ValueError("model aliases map non-empty names to non-empty model names")
    return aliases


def split_model(model: str) -> tuple[str, str | None]:
    """A request's `model` -> (base model, LoRA adapter or None): `smollm2-135m:support-v3` names the adapter
    `support-v3` on `smollm2-135m`."""
    base, sep, adapter = model.partition(":")
    return (base, adapter) if sep and base and adapter else (model, None)


def served_model(name: str, aliases: Mapping[str, str]) -> str:
    """The served model a request's `model` runs on: its alias target, else the name itself; for `base:adapter`,
    the base's (the adapter travels with each row)."""
    if name in aliases:
        return aliases[name]
    base = split_model(name)[0]
    return aliases.get(base, base)


def check_served(model: str, requested: str, served: Iterable[str]) -> None:
    """Raise `UnservedModel` unless a live worker serves `model` (what `requested` resolved to)."""
    served = sorted(set(served))
    if model in served:
        return
    via = "" if model == requested else f" (alias of {model!r})"
    offer = f"served models: {', '.join(served)}" if served else "no worker is serving any model right now"
    raise UnservedModel(f"model {requested!r}{via} is not served here; {offer}. Map the name to a served model "
                        "with TIDE_MODEL_ALIASES, or set TIDE_ACCEPT_UNSERVED=true to let batches wait for a worker")
