"""Backend choice and the rotary cos/sin table."""
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from tide import kernels
from tide.kernels import native


def test_cpu_gets_the_native_library_or_the_twins(monkeypatch):
    monkeypatch.delenv("TIDE_KERNELS", raising=False)
    ops = kernels.get_ops(torch.device("cpu"))
    assert ops.backend == ("torch" if native.load() is None else "native")
    assert ops.paged_attention.__module__ == f"tide.kernels.{ops.backend}_{'attention' if ops.backend == 'torch' else 'ops'}"


def test_cpu_choice_is_logged(monkeypatch, caplog):
    monkeypatch.delenv("TIDE_KERNELS", raising=False)
    monkeypatch.setattr(kernels.dispatch, "_logged", set())
    with caplog.at_level("INFO", logger="tide.kernels"):
        kernels.get_ops(torch.device("cpu"))
    assert [r.message for r in caplog.records if "CPU paged attention" in r.message] == [
        f"CPU paged attention: {native.status()}"]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_environment_overrides_the_backend(monkeypatch, backend):
    monkeypatch.setenv("TIDE_KERNELS", backend)
    ops = kernels.get_ops(torch.device("cpu"))
    assert ops.backend == backend
    assert ops.silu_and_mul.__module__ == f"tide.kernels.{backend}_{'elementwise' if backend == 'triton' else 'ops'}"


def test_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setenv("TIDE_KERNELS", "cuda")
    with pytest.raises(ValueError, match="TIDE_KERNELS"):
        kernels.get_ops(torch.device("cpu"))


ROPE = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
}


@pytest.mark.parametrize("rope", list(ROPE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cos_sin_cache_matches_transformers(rope, dtype):
    config = LlamaConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=512,
                         rope_parameters=ROPE[rope])
    hf_rope = LlamaRotaryEmbedding(config)
    positions = torch.tensor([[0, 1, 63, 64, 300, 511]])
    cos, sin = hf_rope(torch.zeros(1, dtype=dtype), positions)
    cache = kernels.build_cos_sin_cache(hf_rope.inv_freq, 512, hf_rope.attention_scaling, dtype)
    half = cache.shape[1] // 2
    assert cache.dtype == dtype and cache.shape == (512, 128)
    assert torch.equal(cache[positions[0], :half], cos[0, :, :half])
    assert torch.equal(cache[positions[0], half:], sin[0, :, :half])
