"""Decoder layers in one native call each (engine/models/native_layers.py): the same bits as the modules."""
import pytest
import torch

from tests.helpers.prompts import CHATS
from tide.engine import LLM, SamplingParams
from tide.engine.models.native_layers import LayerStep
from tide.kernels import native, native_linear

LIBRARY = native.load()
pytestmark = pytest.mark.skipif(not native_linear.serves(LIBRARY, torch.float32, 64),
                                reason="no native linears on this CPU (the fused layers run on them)")


def _generate(llm: LLM, fused: bool):
    model = llm.engine.runner.model
    layers, model.native_layers = model.native_layers, model.native_layers if fused else None
    try:
        messages = [[{"role": "user", "content": c}] for c in CHATS]
        return llm.generate(messages, SamplingParams(temperature=0.0, max_tokens=12, logprobs=3))
    finally:
        model.native_layers = layers


def test_fused_layers_give_the_modules_bits(smollm2_dir, monkeypatch):
    """Chunked prefill and decode steps with the middle layers fused give the modules' tokens and logprobs, bit for
    bit (the logprobs come from the full fp32 logits, so a changed bit in any hidden state shows)."""
    llm = LLM(model=str(smollm2_dir), dtype="float32", max_num_batched_tokens=48, enable_prefix_caching=False)
    assert llm.engine.runner.model.native_layers is not None
    layers, run = set(), LayerStep.run
    monkeypatch.setattr(LayerStep, "run", lambda self, index, *a: layers.add(index) or run(self, index, *a))
    fused, plain = _generate(llm, fused=True), _generate(llm, fused=False)
    assert layers == set(range(len(llm.engine.runner.model.layers)))  # the last in decode steps
    for a, b in zip(fused, plain, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert [lp.logprob for lp in a.outputs[0].logprobs] == [lp.logprob for lp in b.outputs[0].logprobs]
        assert [lp.top for lp in a.outputs[0].logprobs] == [lp.top for lp in b.outputs[0].logprobs]


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_layers_with_biases_or_qk_norms_keep_the_modules(tiny_model_dir, kind):
    """Qwen2's q/k/v biases and Qwen3's q/k norms are not in the fused call: their layers run as modules."""
    llm = LLM(model=str(tiny_model_dir(kind)), dtype="float32")
    assert llm.engine.runner.model.native_layers is None
