"""The OpenAI endpoints a batch may name, and the one place an endpoint Tide does not serve yet is refused."""
from __future__ import annotations

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
RESPONSES_URL = "/v1/responses"
BATCH_ENDPOINTS = (CHAT_URL, COMPLETIONS_URL, RESPONSES_URL)

# OpenAI endpoints a batch may name that Tide refuses, with the reason the user reads.
_NOT_SERVED = {
    "/v1/embeddings": "embeddings batches are not supported yet: Tide serves /v1/chat/completions, /v1/completions "
                      "and /v1/responses",
}


class UnsupportedEndpoint(ValueError):
    """An endpoint no Tide batch serves; the message says which ones it does."""


def check_endpoint(url: object) -> str:
    """`url` if a batch may name it, else `UnsupportedEndpoint` saying why."""
    if url in BATCH_ENDPOINTS:
        return url  # type: ignore[return-value]
    if isinstance(url, str) and url in _NOT_SERVED:
        raise UnsupportedEndpoint(_NOT_SERVED[url])
    raise UnsupportedEndpoint(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}, got {url!r}")
