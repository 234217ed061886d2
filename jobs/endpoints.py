"""The OpenAI endpoints a batch may name: three that generate and one that embeds."""
from __future__ import annotations

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
RESPONSES_URL = "/v1/responses"
EMBEDDINGS_URL = "/v1/embeddings"
GENERATION_ENDPOINTS = (CHAT_URL, COMPLETIONS_URL, RESPONSES_URL)
BATCH_ENDPOINTS = (*GENERATION_ENDPOINTS, EMBEDDINGS_URL)


class UnsupportedEndpoint(ValueError):
    """An endpoint no Tide batch serves; the message says which ones it does."""


def check_endpoint(url: object) -> str:
    """`url` if a batch may name it, else `UnsupportedEndpoint` saying why."""
    if url in BATCH_ENDPOINTS:
        return url  # type: ignore[return-value]
    raise UnsupportedEndpoint(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}, got {url!r}")
