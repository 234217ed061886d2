"""Paged attention: Triton (interpreter, or a GPU) and the PyTorch twin against a float64 reference."""
import pytest
import torch

from tests.helpers.attention import reference
from tests.helpers.kernel_device import TRITON_DTYPES
from tide.kernels import torch_attention, torch_ops, triton_attention

# name: (decode context lengths, prefill (context, chunk) pairs, Hq, Hkv, head_dim, block_size)
CASES = {
    "decode_only_mha": ([1, 17, 33, 16, 5], [], 4, 4, 64, 16),
    # (40, 1): a one-token chunk at the end of a chunked prefill is still a prefill, not a decode.
    "prefill_only_gqa3": ([], [(19, 19), (40, 7), (1, 1), (16, 16), (40, 1)], 6, 2, 64, 16),
    "mixed_gqa8_block32": ([31, 64, 2], [(50, 13), (33, 33)], 8, 1, 64, 32),
    "mixed_gqa3_d128": ([65, 1], [(70, 21), (3, 2)], 6, 2, 128, 16),
    "decode_only_gqa8_d128_block32": ([97, 32, 33, 1], [], 8, 1, 128, 32),
}
# bf16 runs the twin's products in bf16 (as HF's eager attention does); the interpreter gets bf16 wrong, so Triton
# is checked in bf16 only on a GPU (tests/helpers/kernel_device.py).
TOLERANCE = {torch.float32: 3e-5, torch.float16: 4e-3, torch.bfloat16: 4e-2}


def build(paged_batch, case: str, dtype: torch.dtype, poison: float):
    decodes, prefills, hq, hkv, head_dim, block_size = CASES[case]
    seed = list(CASES).index(case) * 7 + (dtype == torch.float16)
    return paged_batch(decodes, prefills, hq, hkv, head_dim, block_size, dtype, poison, seed)


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_twin_and_reference(paged_batch, case, dtype):
    batch = build(paged_batch, case, dtype, poison=float("nan"))
    expected = reference(batch)
    out = triton_attention.paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double().cpu(), expected, atol=tol, rtol=tol)
    # The twin reads whole blocks in decodes, so it gets finite garbage instead of NaN past each sequence's end.
    twin_batch = build(paged_batch, case, dtype, poison=1e4)
    twin = torch_ops.paged_attention(twin_batch.q, twin_batch.k_cache, twin_batch.v_cache, twin_batch.meta,
                                     twin_batch.scale)
    torch.testing.assert_close(out, twin, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])
def test_twin_matches_reference(paged_batch, case, dtype, chunk_bytes, monkeypatch):
    """The twin with one block per decode chunk and with everything in one chunk."""
    monkeypatch.setattr(torch_attention, "DECODE_CHUNK_BYTES", chunk_bytes)
    batch = build(paged_batch, case, dtype, poison=1e4)
    out = torch_attention.paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double().cpu(), reference(batch), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("tile_keys", [16, 64])
def test_split_k_equals_single_pass(paged_batch, dtype, tile_keys):
    """Splits of 1 block leave the short decodes with empty splits, which must weigh nothing; 64-key tiles run past
    the end of 3-block splits, which must not count keys twice."""
    batch = paged_batch([1, 5, 100, 47, 16], [], 6, 2, 64, 16, dtype, float("nan"), seed=11)
    meta = batch.meta
    results = []
    for splits in (1, 3, 7):
        out = torch.full_like(batch.q, float("nan"))
        triton_attention.decode_attention(batch.q, batch.k_cache, batch.v_cache, out, meta.block_tables,
                                          meta.seq_lens, meta.max_seq_len, batch.scale, splits, tile_keys)
        results.append(out)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(results[0].double().cpu(), reference(batch), atol=tol, rtol=tol)
    for out in results[1:]:
        torch.testing.assert_close(out, results[0], atol=tol / 10, rtol=tol / 10)


@pytest.mark.parametrize("tile_keys", [16, 64])
def test_prefill_tiles_of_several_blocks_match_the_reference(paged_batch, tile_keys):
    """Prefill tiles reading 64 keys over 4 blocks: chunks ending mid-tile, causal edges inside a tile, a 1-token
    chunk, on a NaN-poisoned cache."""
    batch = paged_batch([], [(19, 19), (70, 21), (1, 1), (130, 64), (40, 1)], 6, 2, 64, 16, torch.float32,
                        float("nan"), seed=13)
    out = torch.full_like(batch.q, float("nan"))
    triton_attention.prefill_attention(batch.q, batch.k_cache, batch.v_cache, out, batch.meta, batch.scale, tile_keys)
    torch.testing.assert_close(out.double().cpu(), reference(batch), atol=3e-5, rtol=3e-5)


def test_every_output_row_is_written(paged_batch):
    """Decode and prefill kernels together cover every row of a NaN-poisoned output."""
    batch = paged_batch([9, 40], [(23, 11), (5, 5)], 6, 2, 64, 16, torch.float32, float("nan"), seed=5)
    meta = batch.meta
    out = torch.full_like(batch.q, float("nan"))
    triton_attention.decode_attention(batch.q[: meta.num_decodes], batch.k_cache, batch.v_cache, out,
                                      meta.block_tables, meta.seq_lens, 40, batch.scale, 2)
    triton_attention.prefill_attention(batch.q, batch.k_cache, batch.v_cache, out, meta, batch.scale)
    torch.testing.assert_close(out.double().cpu(), reference(batch), atol=3e-5, rtol=3e-5)


def test_split_count_is_one_off_gpu():
    assert triton_attention.choose_num_splits(1, 1, 1000, torch.device("cpu")) == 1
