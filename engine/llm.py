"""Offline API: hand over all prompts, get all outputs back in order."""
from __future__ import annotations

from typing import Sequence as Seq

from tide.engine.config import EngineConfig
from tide.engine.llm_engine import LLMEngine
from tide.engine.outputs import RequestOutput
from tide.engine.request import Prompt
from tide.engine.sampling_params import SamplingParams


class LLM:
    """`LLM(model=..., **EngineConfig fields).generate(prompts, params)` runs every prompt to completion."""

    def __init__(self, model: str = "smollm2-135m", **config) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **config))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | Seq[Prompt], sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 priorities: Seq[int] | None = None, use_tqdm: bool = False) -> list[RequestOutput]:
        """Generate for a prompt or a list of prompts (text, token ids, or chat messages); outputs keep input order."""
        prompts = _as_prompt_list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        priorities = list(priorities) if priorities is not None else [0] * len(prompts)
        base = id(prompts)
        for i, (prompt, p, prio) in enumerate(zip(prompts, params, priorities)):
            self.engine.add_request(f"{base}-{i}", prompt, p, priority=prio)
        results: dict[str, RequestOutput] = {}
        progress = _progress(len(prompts), use_tqdm)
        while self.engine.has_unfinished():
            for out in self.engine.step():
                results[out.request_id] = out
                if progress is not None:
                    progress.update(1)
        if progress is not None:
            progress.close()
        return [results[f"{base}-{i}"] for i in range(len(prompts))]


def _as_prompt_list(prompts) -> list[Prompt]:
    """A single prompt (a string, one token-id list, or one conversation) becomes a list of one."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, list) and prompts and (isinstance(prompts[0], int) or isinstance(prompts[0], dict)):
        return [prompts]
    return list(prompts)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="generate", unit="req")
