"""Which task a model serves, read from its files: `embed` for an encoder architecture or a sentence-transformers
directory with a Pooling module (a decoder one included, as Qwen3-Embedding ships), else `generate`."""
from __future__ import annotations

import json
from pathlib import Path

from tide.engine.embeddings import EMBED_TASK, GENERATE_TASK
from tide.engine.encoder.bert import ARCHITECTURES
from tide.engine.encoder.pooling import has_pooling_config


def model_task(model_dir: Path) -> str:
    """The task a resolved model directory serves."""
    config = json.loads((model_dir / "config.json").read_text())
    architecture = (config.get("architectures") or [None])[0]
    return EMBED_TASK if architecture in ARCHITECTURES or has_pooling_config(model_dir) else GENERATE_TASK
