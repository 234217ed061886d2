"""KV-cache write, RMSNorm, rotary embedding and SiLU-and-mul: Triton (interpreter, or a GPU) and twin against
float64."""
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from tests.helpers.kernel_device import DEVICE, ON_GPU, TRITON_DTYPES
from tide import kernels
from tide.kernels import native_ops, torch_ops, triton_ops

DTYPES = TRITON_DTYPES
BACKENDS = {"triton": triton_ops, "torch": torch_ops}
# native: fp32/bf16 rows by memcpy, fp16 through the twin; a CPU library, so not on a GPU.
KV_WRITERS = BACKENDS if ON_GPU else {**BACKENDS, "native": native_ops}
# Against float64, per output element: a few units in the last place of the dtype (bf16 keeps 8 bits).
TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
# RMSNorm's output rounds a product of the input and the weight, each already rounded: a little more in 16 bits.
NORM_TOL = {**TOL, torch.float16: 1e-2}


def rand(*shape, dtype=torch.float32, seed):
    """Drawn on the CPU from a seeded generator, so a GPU run checks the same numbers."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)


@pytest.mark.parametrize("backend", list(KV_WRITERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32])
def test_write_kv_cache_fills_mapped_slots_only(backend, dtype, block_size):
    if backend == "triton" and dtype not in TRITON_DTYPES:
        pytest.skip("the interpreter gets bf16 wrong")
    num_blocks, heads, head_dim = 5, 3, 64
    slots = torch.tensor([7, -1, 2 * block_size + 5, block_size - 1, -1, 4 * block_size, block_size], device=DEVICE)
    key = rand(len(slots), heads, head_dim, dtype=dtype, seed=1)
    value = rand(len(slots), heads, head_dim, dtype=dtype, seed=2)
    k_cache = torch.full((num_blocks, block_size, heads, head_dim), float("nan"), dtype=dtype, device=DEVICE)
    v_cache = k_cache.clone()
    KV_WRITERS[backend].write_kv_cache(key, value, k_cache, v_cache, slots)
    keep = slots >= 0
    for cache, src in ((k_cache, key), (v_cache, value)):
        flat = cache.view(-1, heads, head_dim)
        assert torch.equal(flat[slots[keep]], src[keep])
        untouched = torch.ones(flat.shape[0], dtype=torch.bool, device=DEVICE)
        untouched[slots[keep]] = False
        assert flat[untouched].isnan().all()


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96, 200])
@pytest.mark.parametrize("with_residual", [True, False])
def test_fused_add_rms_norm(dtype, hidden, with_residual):
    x = rand(7, hidden, dtype=dtype, seed=hidden)
    residual = rand(7, hidden, dtype=dtype, seed=hidden + 1) if with_residual else None
    weight = rand(hidden, dtype=dtype, seed=hidden + 2)
    out, res_out = triton_ops.fused_add_rms_norm(x, residual, weight, 1e-6)
    twin_out, twin_res = torch_ops.fused_add_rms_norm(x, residual, weight, 1e-6)
    summed = x if residual is None else x + residual
    assert torch.equal(res_out, summed) and torch.equal(twin_res, summed)
    # Triton and the twin sum the squares in other orders: one unit in the last place apart at most.
    torch.testing.assert_close(out, twin_out, atol=TOL[dtype] / 2, rtol=TOL[dtype] / 4)
    tol = NORM_TOL[dtype]
    torch.testing.assert_close(out.double(), reference_rms_norm(summed, weight, 1e-6), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_per_head_on_a_strided_view(dtype):
    """Qwen3 normalises q per head: the input is a view into a fused qkv projection."""
    qkv = rand(5, 3 * 4 * 32, dtype=dtype, seed=3)
    q = qkv[:, : 4 * 32].view(5, 4, 32)
    weight = rand(32, dtype=dtype, seed=4)
    out = triton_ops.rms_norm(q, weight, 1e-6)
    assert out.shape == q.shape
    torch.testing.assert_close(out, torch_ops.rms_norm(q, weight, 1e-6), atol=TOL[dtype] / 2, rtol=TOL[dtype] / 4)
    tol = NORM_TOL[dtype]
    torch.testing.assert_close(out.double(), reference_rms_norm(q, weight, 1e-6), atol=tol, rtol=tol)


def reference_rotary(positions, x, cos_sin_cache, is_neox):
    """HF's rotate_half for neox; adjacent pairs (GPT-J) rotated explicitly."""
    cos, sin = cos_sin_cache[positions].double().chunk(2, dim=-1)
    x = x.double()
    if is_neox:
        full_cos, full_sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
        return apply_rotary_pos_emb(x, x, full_cos, full_sin, unsqueeze_dim=1)[0]
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[:, None], sin[:, None]
    return torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rotary_embedding_in_place(backend, dtype, is_neox, head_dim):
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=DEVICE).float() / head_dim))
    cache = kernels.build_cos_sin_cache(inv_freq, 300, 1.0, dtype)
    positions = torch.tensor([0, 1, 17, 299, 5], device=DEVICE)
    # q and k are views into one fused projection, as the engine hands them over.
    qkv = rand(5, (6 + 2 + 2) * head_dim, dtype=dtype, seed=head_dim)
    q = qkv[:, : 6 * head_dim].view(5, 6, head_dim)
    k = qkv[:, 6 * head_dim : 8 * head_dim].view(5, 2, head_dim)
    expected_q = reference_rotary(positions, q, cache, is_neox)
    expected_k = reference_rotary(positions, k, cache, is_neox)
    v_before = qkv[:, 8 * head_dim :].clone()
    BACKENDS[backend].rotary_embedding(positions, q, k, cache, is_neox)
    tol = TOL[dtype]
    torch.testing.assert_close(q.double(), expected_q, atol=tol, rtol=tol)
    torch.testing.assert_close(k.double(), expected_k, atol=tol, rtol=tol)
    assert torch.equal(qkv[:, 8 * head_dim :], v_before)


def test_rotary_triton_equals_twin_in_fp16():
    """Bit for bit in the interpreter. A GPU's compiler fuses `a * b - c * d` into an FMA, which rounds once less:
    there the two may differ by a unit in the last place of values of the inputs' size (seen on an H200)."""
    cache = kernels.build_cos_sin_cache(torch.rand(32, device=DEVICE), 64, 1.0, torch.float16)
    positions = torch.tensor([3, 63, 0], device=DEVICE)
    q, k = rand(3, 4, 64, dtype=torch.float16, seed=8), rand(3, 2, 64, dtype=torch.float16, seed=9)
    q2, k2 = q.clone(), k.clone()
    triton_ops.rotary_embedding(positions, q, k, cache, True)
    torch_ops.rotary_embedding(positions, q2, k2, cache, True)
    tol = 1e-3 if ON_GPU else 0.0
    torch.testing.assert_close(q, q2, atol=tol, rtol=tol)
    torch.testing.assert_close(k, k2, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [128, 1000, 1536])
def test_silu_and_mul(backend, dtype, inter):
    x = rand(3, 2 * inter, dtype=dtype, seed=inter)
    out = BACKENDS[backend].silu_and_mul(x)
    xd = x.double()
    expected = torch.nn.functional.silu(xd[:, :inter]) * xd[:, inter:]
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)
    assert out.dtype == dtype and out.shape == (3, inter)
