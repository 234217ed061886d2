"""Weight offload streams decoder layers in under a resident-layer cap and gives the same greedy tokens."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.helpers.models import TINY_CONFIGS
from tests.helpers.prompts import make_prompts
from tide.engine import LLM, SamplingParams
from tide.engine.loader import load_tokenizer

NUM_LAYERS = 4

PARAMS = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=1)


def assert_same_greedy(got, expected) -> None:
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    for ours, ref in zip(got, expected):
        for a, b in zip(ours.outputs[0].logprobs, ref.outputs[0].logprobs):
            assert abs(a.logprob - b.logprob) < 1e-4


@pytest.fixture(scope="module")
def deep_tiny_dir(smollm2_dir, tmp_path_factory):
    """The tiny llama with 4 layers instead of 2, so a cap of 1 or 2 layers really streams."""
    config = TINY_CONFIGS["llama"]()
    config.num_hidden_layers = NUM_LAYERS
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama-4-layers")
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path, safe_serialization=True)
    load_tokenizer(smollm2_dir).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("resident", [1, 2])
def test_layers_stream_under_the_cap(deep_tiny_dir, resident):
    """At most 1 or 2 of 4 layers hold weights at once; tokens and logprobs match the all-resident engine."""
    prompts = make_prompts(49152)[:6]
    expected = LLM(model=deep_tiny_dir, dtype="float32", num_threads=1).generate(prompts, PARAMS)
    llm = LLM(model=deep_tiny_dir, dtype="float32", num_threads=1, offload_max_resident_layers=resident)
    got = llm.generate(prompts, PARAMS)
    assert_same_greedy(got, expected)
    offloader = llm.engine.runner.model.offloader
    layer_bytes = max(offloader.layer_bytes)
    assert layer_bytes * (resident - 1) < offloader.peak_resident_bytes <= layer_bytes * resident
    assert offloader.fetches >= NUM_LAYERS * llm.engine.stats.num_steps  # every layer came in again on every step
    # Between steps only the prefetched next layers hold weights.
    assert offloader.resident_bytes <= layer_bytes * (resident - 1)
    assert all(p.numel() == 0 for p in llm.engine.runner.model.layers[2].parameters())


def test_cap_covering_every_layer_keeps_them_resident(tiny_model_dir):
    llm = LLM(model=str(tiny_model_dir("llama")), dtype="float32", num_threads=1, offload_max_resident_layers=2)
    assert llm.engine.runner.model.offloader is None
    assert all(p.numel() > 0 for p in llm.engine.runner.model.layers[1].parameters())


def test_bad_cap_is_refused():
    with pytest.raises(ValueError, match="offload_max_resident_layers must be >= 1, got 0"):
        LLM(model="unused", offload_max_resident_layers=0)
