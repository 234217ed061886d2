"""OpenAI's list envelope with cursor pagination (`after`, `limit`, `has_more`, `first_id`, `last_id`)."""
from __future__ import annotations

from collections.abc import Callable


def list_page(ids: list[str], limit: int, view: Callable[[str], dict | None]) -> dict:
    """`ids` holds up to limit + 1 ids in order; ids whose view is None (gone meanwhile) are skipped."""
    data = [item for item in (view(i) for i in ids[:limit]) if item is not None]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(ids) > limit}
