"""Packed CPU linears: same results as nn.Linear in fp32 and bf16 (on CPUs with or without oneDNN bf16)."""
import pytest
import torch

from tide.engine import LLM, SamplingParams
from tide.engine.models.cpu_linear import PackedLinear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_nn_linear(dtype, bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 160, bias=bias).to(dtype)
    packed = PackedLinear(linear)
    x = torch.randn(37, 96).to(dtype)
    out = packed(x)
    assert out.dtype == dtype
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1.6e-2)
    torch.testing.assert_close(out, linear(x), **tol)


def test_engine_runs_in_bfloat16(tiny_model_dir):
    llm = LLM(model=str(tiny_model_dir("llama")), dtype="bfloat16", kv_cache_bytes=1 << 20)
    outs = llm.generate([[5, 6, 7, 8], [9] * 40], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert [len(o.token_ids) for o in outs] == [6, 6]
