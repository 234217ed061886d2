"""An engine's running totals, read by the worker's heartbeat and each shard's figures (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EngineStats:
    """Running totals since the engine started."""

    num_steps: int = 0
    preemptions: int = 0
    prefix_cache_hit_rate: float = 0.0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    guided_forced_tokens: int = 0  # appended by guided fast-forward, without a decode step each
    mean_batch_occupancy: float = 0.0
    load_time_s: float = 0.0
    busy_time_s: float = 0.0
    spec_proposed_tokens: int = 0  # draft tokens verified by the target (speculative decoding)
    spec_accepted_tokens: int = 0  # of those, the ones it agreed with
    spec_acceptance_rate: float = 0.0
    _occupancy_sum: float = field(default=0.0, repr=False)
