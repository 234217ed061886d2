"""Offline API: hand over all inputs, get their vectors back in order."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tide.engine.embeddings import EmbedParams
from tide.engine.encoder.config import EncoderConfig
from tide.engine.encoder.engine import EmbeddingEngine, Input


class Embedder:
    """`Embedder(model=..., **EncoderConfig fields).embed(texts)` -> [len(texts), dimensions] float32."""

    def __init__(self, model: str = "all-minilm-l6-v2", **config) -> None:
        self.engine = EmbeddingEngine(EncoderConfig(model=model, **config))

    def embed(self, inputs: Sequence[Input], params: EmbedParams | None = None) -> np.ndarray:
        """One vector per input (a text or a token-id list), in input order; raises on the first failed input."""
        base = id(inputs)
        for i, item in enumerate(inputs):
            self.engine.add_request(f"{base}-{i}", item, params)
        results = {}
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.error is not None:
                    raise ValueError(f"input {out.request_id.rsplit('-', 1)[1]}: {out.error}")
                results[out.request_id] = out.embeddings[0]
        return np.stack([results[f"{base}-{i}"] for i in range(len(inputs))])
