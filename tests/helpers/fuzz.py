"""Ways a JSON payload goes bad on the wire, for the property tests of every input boundary."""
from __future__ import annotations

BREAKAGES = ["keep", "keep", "truncate", "invalid utf-8", "deep nesting"]  # "keep" twice: half the cases are valid


def mutate(payload: bytes, how: str, at: int, depth: int, step: int, field: str | None = None) -> bytes:
    """`payload` cut short at `at`, with invalid UTF-8 spliced in at `at`, replaced by arrays nested
    `depth + step * at` deep (as the value of `field` in an object, if given), or kept as it is."""
    cut = at % max(len(payload), 1)
    if how == "truncate":
        return payload[:cut]
    if how == "invalid utf-8":
        return payload[:cut] + b"\xff\xfe\xc3" + payload[cut:]
    if how == "deep nesting":
        nested = depth + step * at
        arrays = b"[" * nested + b"]" * nested
        return arrays if field is None else b'{"%s": %s}' % (field.encode(), arrays)
    return payload
