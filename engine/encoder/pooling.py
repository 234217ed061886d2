"""How a model turns token states into one vector: read from its sentence-transformers files, pooled on the device.

A sentence-transformers directory says it in `modules.json` (a Pooling module with its `config.json`, a Normalize
module or not) and `sentence_bert_config.json` (`max_seq_length`). Without those files the worker's `pooling`
setting decides, and the vector is normalised (as Qwen3-Embedding and e5-mistral are used).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tide.engine.encoder.packing import PackedBatch

POOLING_MODES = ("mean", "cls", "last", "max")
_ST_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last",
             "pooling_mode_max_tokens": "max"}
_POOLING_TYPE = "sentence_transformers.models.Pooling"
_NORMALIZE_TYPE = "sentence_transformers.models.Normalize"


@dataclass(frozen=True)
class PoolingSpec:
    mode: str  # one of POOLING_MODES
    normalize: bool
    max_seq_length: int | None  # sentence-transformers' truncation limit, when the directory names one


def has_pooling_config(model_dir: Path) -> bool:
    """Whether the directory is a sentence-transformers model with a Pooling module."""
    return any(m.get("type") == _POOLING_TYPE for m in _modules(model_dir))


def read_pooling(model_dir: Path, override: str | None) -> PoolingSpec:
    """The directory's pooling, normalisation and length limit; `override` (a worker setting) replaces the mode."""
    if override is not None and override not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {override!r}")
    modules = _modules(model_dir)
    pooling = next((m for m in modules if m.get("type") == _POOLING_TYPE), None)
    mode = override or (_st_mode(model_dir / pooling.get("path", ""), model_dir) if pooling else None)
    if mode is None:
        raise ValueError(f"{model_dir} names no pooling (no sentence-transformers Pooling module in modules.json); "
                         f"choose one with the worker's pooling setting: {', '.join(POOLING_MODES)}")
    normalize = any(m.get("type") == _NORMALIZE_TYPE for m in modules) if modules else True
    return PoolingSpec(mode, normalize, _max_seq_length(model_dir))


def _modules(model_dir: Path) -> list[dict]:
    path = model_dir / "modules.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _st_mode(pooling_dir: Path, model_dir: Path) -> str:
    config = json.loads((pooling_dir / "config.json").read_text())
    modes = [mode for key, mode in _ST_MODES.items() if config.get(key)]
    unknown = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in _ST_MODES]
    if len(modes) != 1 or unknown:
        raise ValueError(f"{model_dir}: pooling {sorted(k for k, v in config.items() if v is True)} is not "
                         f"supported; supported: exactly one of {', '.join(POOLING_MODES)}")
    return modes[0]


def _max_seq_length(model_dir: Path) -> int | None:
    path = model_dir / "sentence_bert_config.json"
    return json.loads(path.read_text()).get("max_seq_length") if path.is_file() else None


def pool(hidden: torch.Tensor, batch: PackedBatch, mode: str) -> torch.Tensor:
    """[T, hidden] token states -> [B, hidden] float32, one vector per packed text."""
    hidden = hidden.float()
    if mode == "cls":
        return hidden.index_select(0, batch.starts)
    lengths = torch.tensor(batch.lengths, device=hidden.device)
    if mode == "last":
        return hidden.index_select(0, batch.starts + lengths - 1)
    if mode == "mean":  # one matmul with a [B, T] averaging matrix: far faster on CPU than a scatter-add
        owners = torch.arange(batch.num_seqs, device=hidden.device).unsqueeze(1) == batch.seq_index.unsqueeze(0)
        return (owners.to(hidden.dtype) / lengths.unsqueeze(1).to(hidden.dtype)) @ hidden
    padded = hidden
    if batch.pad_index is not None:  # padding at -inf never wins the max
        padded = hidden.new_full((batch.num_seqs * batch.max_len, hidden.shape[-1]), float("-inf"))
        padded.index_copy_(0, batch.pad_index, hidden)
    return padded.view(batch.num_seqs, batch.max_len, -1).amax(dim=1)


def finish(vectors: torch.Tensor, normalize: bool, dimensions: list[int | None]) -> list[np.ndarray]:
    """Per text, on the host: the vector as the model gives it, or its first `dimensions` values (Matryoshka)
    renormalised on the device first."""
    if normalize:
        vectors = F.normalize(vectors, p=2, dim=-1)
    rows = list(vectors.cpu().numpy())
    for width in {d for d in dimensions if d is not None and d != vectors.shape[1]}:
        picked = [i for i, d in enumerate(dimensions) if d == width]
        short = F.normalize(vectors[picked, :width], p=2, dim=-1).cpu().numpy()
        for i, row in zip(picked, short):
            rows[i] = row
    return rows
