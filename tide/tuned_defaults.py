"""Engine settings `tide tune` found best for a model on this machine, kept where workers pick them up.

`{TIDE_CACHE_DIR or ~/.cache/tide}/tuned/{model}.json`; an engine built by an entry point (`tide worker`,
`tide run`) takes `max_num_seqs` and `max_num_batched_tokens` from it unless they were given.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger("tide.tune")
TUNED_KEYS = ("max_num_seqs", "max_num_batched_tokens")


def tuned_path(model: str, cache_dir: str | None = None) -> Path:
    root = Path(cache_dir or os.environ.get("TIDE_CACHE_DIR") or Path.home() / ".cache" / "tide").expanduser()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model.strip("/")).strip("-") or "model"
    return root / "tuned" / f"{name}.json"


def tuned_options(model: str, given: dict) -> dict:
    """The tuned engine options for `model` that `given` leaves unset (None), from its tuned file if any."""
    path = tuned_path(model)
    if not path.is_file() or all(given.get(key) is not None for key in TUNED_KEYS):
        return {}
    try:
        engine = json.loads(path.read_text())["engine"]
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring tuned settings %s: %s", path, exc)
        return {}
    chosen = {key: int(engine[key]) for key in TUNED_KEYS if given.get(key) is None and engine.get(key)}
    if chosen:
        logger.info("engine settings from %s: %s", path, chosen)
    return chosen
