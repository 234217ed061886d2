"""Scorers: `score(output, expected) -> bool | float in [0, 1]`; an item passes at 1.0 (or True).

Built in: exact, contains, regex, json_valid, json_schema, numeric, choice. Any other name is a dotted path to a
callable with the same signature (`package.module.function` or `package.module:function`).
"""
from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Scorer = Callable[[str, Any], "bool | float"]


class ScorerError(ValueError):
    """A scorer that cannot be found, or an expected value a scorer cannot use (an error row, not a crash)."""


@dataclass(frozen=True)
class Score:
    passed: bool
    score: float


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def exact(output: str, expected: Any) -> bool:
    """Equal after trimming and collapsing whitespace."""
    return " ".join(output.split()) == " ".join(str(expected).split())


def contains(output: str, expected: Any) -> bool:
    """The expected text (or every one of a list) appears in the output, ignoring case and spacing."""
    wanted = expected if isinstance(expected, list) else [expected]
    return all(_norm(str(w)) in _norm(output) for w in wanted)


def regex(output: str, expected: Any) -> bool:
    try:
        return re.search(str(expected), output) is not None
    except re.error as exc:
        raise ScorerError(f"expected is not a valid regular expression: {exc}") from None


def _json_in(output: str) -> Any:
    """The output as JSON, or the first {...} / [...] block in it (models like to wrap JSON in prose or fences)."""
    text = output.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text[match.start():])[0]
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON value in the output")


def json_valid(output: str, expected: Any = None) -> bool:
    try:
        _json_in(output)
    except ValueError:
        return False
    return True


def json_schema(output: str, expected: Any) -> bool:
    """The output's JSON validates against the JSON Schema in `expected` (an object, or its JSON text)."""
    import jsonschema

    schema = json.loads(expected) if isinstance(expected, str) else expected
    if not isinstance(schema, dict):
        raise ScorerError("json_schema wants expected to be a JSON Schema object")
    try:
        value = _json_in(output)
    except ValueError:
        return False
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError as exc:
        raise ScorerError(f"expected is not a valid JSON Schema: {exc.message}") from None
    return True


_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def numeric(output: str, expected: Any) -> bool:
    """The last number in the output equals `expected` (a number, or {value, tolerance}; default 1e-6 relative)."""
    if isinstance(expected, dict):
        target, tolerance = expected.get("value"), float(expected.get("tolerance", 0))
    else:
        target, tolerance = expected, None
    try:
        target = float(str(target).replace(",", ""))
    except (TypeError, ValueError):
        raise ScorerError(f"numeric wants a number as expected, got {expected!r}") from None
    found = _NUMBER.findall(output)
    if not found:
        return False
    try:
        value = float(found[-1].replace(",", ""))
    except ValueError:
        return False
    if tolerance is None:
        return math.isclose(value, target, rel_tol=1e-6, abs_tol=1e-9)
    return abs(value - target) <= tolerance


_CHOICE = re.compile(r"(?<![A-Za-z])\(?([A-Za-z])[).:]?(?![A-Za-z])")


def choice(output: str, expected: Any) -> bool:
    """Multiple choice: the first standalone letter in the output ('B', '(b)', 'B.', 'Answer: B') is `expected`."""
    letter = str(expected).strip().strip("().").upper()
    if len(letter) != 1:
        raise ScorerError(f"choice wants a single letter as expected, got {expected!r}")
    stripped = re.sub(r"^\s*(answer|the answer is)\s*[:\-]?\s*", "", output, flags=re.IGNORECASE)
    match = _CHOICE.search(stripped)
    return match is not None and match.group(1).upper() == letter


BUILTIN: dict[str, Scorer] = {"exact": exact, "contains": contains, "regex": regex, "json_valid": json_valid,
                              "json_schema": json_schema, "numeric": numeric, "choice": choice}


def get_scorer(name: str) -> Scorer:
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module_name or not attr:
        raise ScorerError(f"unknown scorer {name!r}: use one of {', '.join(BUILTIN)} or a dotted path "
                          "like mypackage.scorers.my_scorer")
    try:
        scorer = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ScorerError(f"cannot load scorer {name!r}: {exc}") from None
    if not callable(scorer):
        raise ScorerError(f"scorer {name!r} is not callable")
    return scorer


def apply(scorer: Scorer, output: str, expected: Any) -> Score:
    """Run a scorer; bools count 1/0, floats are clamped to [0, 1]. Raises ScorerError on a bad expected value."""
    try:
        value = scorer(output, expected)
    except ScorerError:
        raise
    except Exception as exc:  # a custom scorer's bug becomes that item's error, not the run's crash
        raise ScorerError(f"scorer failed: {type(exc).__name__}: {exc}") from None
    if isinstance(value, bool):
        return Score(value, 1.0 if value else 0.0)
    try:
        score = min(1.0, max(0.0, float(value)))
    except (TypeError, ValueError):
        raise ScorerError(f"scorer returned {value!r}, not a bool or a number") from None
    return Score(score >= 1.0, score)
