"""The native C++ paged attention (kernels/csrc) against the float64 reference and the PyTorch twin."""
import pytest
import torch

from tests.helpers.attention import reference
from tide.kernels import native, native_ops, torch_attention, torch_ops
from tide.kernels.metadata import AttentionMetadata

LIBRARY = native.load()
pytestmark = pytest.mark.skipif(LIBRARY is None, reason=f"native library unavailable: {native.status()}")

# name: (decode context lengths, prefill (context, chunk) pairs); (n, n) is a prefill with an empty prefix.
SHAPES = {
    "mixed": ([1, 17, 33, 129, 5], [(19, 19), (40, 7), (1, 1), (150, 37), (40, 1)]),
    "decode_only": ([300, 2, 64, 77], []),
    "prefill_only": ([], [(100, 100), (61, 61), (200, 3)]),
}
TOLERANCE = {torch.float32: 3e-5, torch.bfloat16: 4e-2}
# The twin rounds bf16 scores and probabilities; the native kernel keeps them in fp32, so they differ by more.
TWIN_TOLERANCE = {torch.float32: 3e-5, torch.bfloat16: 6e-2}


def run_native(batch, vector_width=None, num_threads=None):
    library = native.load(vector_width)
    assert library is not None
    assert native_ops.native_serves(batch.q, batch.k_cache, library)
    return native_ops.paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale,
                                      library=library, num_threads=num_threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 3, 8])
@pytest.mark.parametrize("block_size", [16, 32, 128])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_native_matches_reference_and_twin(paged_batch, dtype, group, block_size, shape):
    decodes, prefills = SHAPES[shape]
    num_kv_heads = 2 if group < 8 else 1
    seed = 100 * group + block_size + len(shape)
    # Unused cache slots hold NaN: the native kernel must never read past a sequence's end.
    batch = paged_batch(decodes, prefills, group * num_kv_heads, num_kv_heads, 64, block_size, dtype,
                        float("nan"), seed)
    out = run_native(batch)
    expected = reference(batch)
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    twin_batch = paged_batch(decodes, prefills, group * num_kv_heads, num_kv_heads, 64, block_size, dtype, 0.0,
                             seed)
    twin = torch_attention.paged_attention(twin_batch.q, twin_batch.k_cache, twin_batch.v_cache, twin_batch.meta,
                                           twin_batch.scale)
    torch.testing.assert_close(out, twin, atol=TWIN_TOLERANCE[dtype], rtol=TWIN_TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sixteen_wide_code_matches(paged_batch, dtype):
    """The AVX-512-width code (run as pairs of 8-wide ops where the CPU lacks AVX-512) gives the same results."""
    batch = paged_batch([1, 17, 300], [(40, 7), (33, 33)], 6, 2, 128, 16, dtype, float("nan"), seed=3)
    wide = run_native(batch, vector_width=16)
    torch.testing.assert_close(wide.double(), reference(batch), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    torch.testing.assert_close(wide, run_native(batch), atol=TOLERANCE[dtype] / 4, rtol=TOLERANCE[dtype] / 4)


@pytest.mark.skipif(native.isa_flags(native.cpu_flags(), "avx2") is None, reason="needs a CPU with AVX2 and FMA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32])
def test_avx2_build_matches(paged_batch, dtype, block_size):
    """The 8-wide AVX2 build (two vectors per 16-key block row in the prefill tiles) on decodes and prefills."""
    decodes, prefills = SHAPES["mixed"]
    batch = paged_batch(decodes, prefills, 6, 2, 64, block_size, dtype, float("nan"), seed=block_size)
    library = native.load(isa="avx2")
    assert library is not None and library.vector_width == 8
    out = native_ops.paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale, library=library)
    torch.testing.assert_close(out.double(), reference(batch), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vector_width", [None, 16])
@pytest.mark.parametrize("block_size", [16, 32])
def test_many_decodes_read_every_head_at_once(paged_batch, dtype, vector_width, block_size):
    """With many decodes in a batch (here 40 on 2 threads) one work item covers all kv heads of a sequence."""
    lengths = [1 + (37 * i) % 211 for i in range(40)]
    batch = paged_batch(lengths, [(50, 9)], 6, 2, 64, block_size, dtype, float("nan"), seed=11)
    out = run_native(batch, vector_width=vector_width, num_threads=2)
    torch.testing.assert_close(out.double(), reference(batch), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


BF16_CPU = "avx512_bf16" in native.cpu_flags() and {"avx512f", "avx512bw"} <= native.cpu_flags()


@pytest.mark.skipif(not BF16_CPU, reason="needs a CPU with AVX512_BF16")
def test_bf16_dot_products_are_picked_at_run_time():
    """On an AVX512_BF16 CPU the default build runs bf16 attention on vdpbf16ps; isa="avx512" keeps the fp32 path."""
    assert LIBRARY.isa == "avx512+bf16" and LIBRARY.bf16_dot_products
    assert "vdpbf16ps" in native.status()
    plain = native.load(isa="avx512")
    assert plain.isa == "avx512" and not plain.bf16_dot_products
    assert not native.load(vector_width=16).bf16_dot_products  # the forced-width build stays generic


@pytest.mark.skipif(not BF16_CPU, reason="needs a CPU with AVX512_BF16")
@pytest.mark.parametrize("head_dim", [64, 128, 96])  # 96: not a multiple of 64, so the fp32 path serves it
@pytest.mark.parametrize("block_size", [16, 7])  # 7: odd, so the fp32 path serves it
@pytest.mark.parametrize("group", [1, 3, 8])
def test_bf16_dot_products_match_the_fp32_path(paged_batch, head_dim, block_size, group):
    """vdpbf16ps scores and values (probabilities rounded to bf16) against the reference and the fp32-FMA build,
    over decodes (single pass, many at once, split) and prefill tiles; NaN in unused slots must never be read."""
    num_kv_heads = 2 if group < 8 else 1
    decodes, prefills = [1, 2, 33, 300, 1100] + [1 + (37 * i) % 211 for i in range(30)], [(40, 7), (150, 37), (61, 61)]
    batch = paged_batch(decodes, prefills, group * num_kv_heads, num_kv_heads, head_dim, block_size, torch.bfloat16,
                        float("nan"), seed=head_dim + block_size + group)
    expected = reference(batch)
    for threads in (1, 2):
        out = run_native(batch, num_threads=threads)
        torch.testing.assert_close(out.double(), expected, atol=TOLERANCE[torch.bfloat16],
                                   rtol=TOLERANCE[torch.bfloat16])
    plain = native_ops.paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale,
                                       library=native.load(isa="avx512"))
    torch.testing.assert_close(out, plain, atol=TOLERANCE[torch.bfloat16], rtol=TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("num_threads", [1, 2, 8])
def test_split_decodes_equal_one_pass(paged_batch, num_threads):
    """Few long decodes are split over key ranges (more threads, more splits) and merged."""
    batch = paged_batch([1500, 700, 3], [], 3, 1, 64, 16, torch.float32, float("nan"), seed=7)
    out = run_native(batch, num_threads=num_threads)
    torch.testing.assert_close(out.double(), reference(batch), atol=3e-5, rtol=3e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_cache(dtype):
    """Every block of the cache is in use and every sequence ends on a block boundary."""
    block_size, num_kv_heads, head_dim = 16, 3, 64
    seq_lens, query_lens = [64, 48, 16, 32], [1, 1, 16, 5]
    num_blocks = sum(n // block_size for n in seq_lens)
    gen = torch.Generator().manual_seed(1)
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen).to(dtype)
    ids = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    tables = torch.zeros(len(seq_lens), max(seq_lens) // block_size, dtype=torch.int32)
    used = 0
    for b, n in enumerate(seq_lens):
        tables[b, : n // block_size] = ids[used : used + n // block_size]
        used += n // block_size
    starts = torch.tensor([0, 1, 2, 18, 23], dtype=torch.int32)
    meta = AttentionMetadata(starts, torch.tensor(seq_lens, dtype=torch.int32), tables, 2, 16, 64, query_lens,
                             seq_lens)
    q = torch.randn(23, 9, head_dim, generator=gen).to(dtype)
    out = native_ops.paged_attention(q, k_cache, v_cache, meta, 0.125, library=LIBRARY)
    twin = torch_attention.paged_attention(q, k_cache, v_cache, meta, 0.125)
    torch.testing.assert_close(out, twin, atol=TWIN_TOLERANCE[dtype], rtol=TWIN_TOLERANCE[dtype])


def test_query_view_with_a_row_stride(paged_batch):
    """q as the engine passes it: a [T, Hq, D] view into the fused qkv projection's output."""
    batch = paged_batch([5, 40], [(30, 9)], 6, 2, 64, 16, torch.float32, float("nan"), seed=9)
    qkv = torch.cat([batch.q.flatten(1), torch.randn(batch.q.shape[0], 256)], dim=1)
    q_view = qkv[:, : 6 * 64].view(-1, 6, 64)
    out = native_ops.paged_attention(q_view, batch.k_cache, batch.v_cache, batch.meta, batch.scale,
                                     library=LIBRARY)
    torch.testing.assert_close(out.double(), reference(batch), atol=3e-5, rtol=3e-5)


def test_unserved_arguments_go_to_the_twin(paged_batch):
    """fp16, and a head_dim that is not a multiple of the vector width, run on the twin."""
    batch = paged_batch([5, 40], [(30, 9)], 6, 2, 64, 16, torch.float16, 0.0, seed=9)
    assert not native_ops.native_serves(batch.q, batch.k_cache, LIBRARY)
    out = native_ops.paged_attention(batch.q, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    torch.testing.assert_close(out.double(), reference(batch), atol=4e-3, rtol=4e-3)
    odd = paged_batch([5], [], 2, 1, 4, 16, torch.float32, 0.0, seed=9)
    assert not native_ops.native_serves(odd.q, odd.k_cache, LIBRARY)


def test_build_failure_falls_back(monkeypatch, tmp_path):
    """No compiler: load() returns None with a reason, and the CPU backend becomes the twins."""
    from tide import kernels
    from tide.kernels import dispatch

    monkeypatch.setenv("TIDE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.delenv("TIDE_KERNELS", raising=False)
    assert native.load() is None
    assert "no C++ compiler" in native.status()
    assert kernels.get_ops(torch.device("cpu")).backend == "torch"
    assert dispatch.cpu_attention_path().startswith("torch twin")


def test_build_is_cached(monkeypatch, tmp_path):
    """A second load in a fresh process state reuses the library on disk instead of compiling again."""
    monkeypatch.setenv("TIDE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_loaded", {})
    first = native.load()
    assert first is not None and first.path.parent == tmp_path / "kernels"
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native.subprocess, "run", _no_compile(native.subprocess.run))
    assert native.load().path == first.path
    assert not list(first.path.parent.glob("*.tmp"))


def _no_compile(run):
    def guarded(cmd, *args, **kwargs):
        assert "--version" in cmd, "compiled again although a cached build exists"
        return run(cmd, *args, **kwargs)
    return guarded


ELEMENTWISE_TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-6), torch.bfloat16: dict(atol=1e-2, rtol=8e-3)}


def _rand(*shape, dtype, seed, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 37, 300])
def test_fused_add_rms_norm_matches_twin(dtype, rows):
    x, residual = _rand(rows, 576, dtype=dtype, seed=1), _rand(rows, 576, dtype=dtype, seed=2)
    weight = _rand(576, dtype=dtype, seed=3).abs() + 0.5
    out, residual_out = native_ops.fused_add_rms_norm(x, residual, weight, 1e-5)
    twin_out, twin_residual = torch_ops.fused_add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(residual_out, twin_residual)  # one rounding of the sum, as in the twin
    torch.testing.assert_close(out, twin_out, **ELEMENTWISE_TOLERANCE[dtype])
    first_out, first_residual = native_ops.fused_add_rms_norm(x, None, weight, 1e-5)
    assert first_residual is x
    torch.testing.assert_close(first_out, torch_ops.rms_norm(x, weight, 1e-5), **ELEMENTWISE_TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 300])
@pytest.mark.parametrize("inter", [1536, 80])  # 80: whole groups of four vectors, then one or two more
def test_silu_and_mul_matches_twin(dtype, rows, inter):
    x = _rand(rows, 2 * inter, dtype=dtype, seed=4, scale=6.0)
    x[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])
    torch.testing.assert_close(native_ops.silu_and_mul(x), torch_ops.silu_and_mul(x), **ELEMENTWISE_TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rotary_embedding_equals_twin_bit_for_bit(dtype, head_dim):
    """Each product and sum rounded as in the twin (no FMA contraction), on q/k views into a fused qkv output."""
    rows, hq, hkv = 45, 9, 3
    qkv = _rand(rows, (hq + 2 * hkv) * head_dim, dtype=dtype, seed=5)
    cos_sin = _rand(512, head_dim, dtype=dtype, seed=6)
    positions = torch.randint(0, 512, (rows,), generator=torch.Generator().manual_seed(7))
    twin_qkv = qkv.clone()
    for buf, ops in ((qkv, native_ops), (twin_qkv, torch_ops)):
        q = buf[:, : hq * head_dim].view(rows, hq, head_dim)
        k = buf[:, hq * head_dim : (hq + hkv) * head_dim].view(rows, hkv, head_dim)
        ops.rotary_embedding(positions, q, k, cos_sin, True)
    assert torch.equal(qkv, twin_qkv)


def _argmax_cases(dtype):
    """Rows that catch a wrong tie, lane, tail or NaN rule, as (name, logits) with unit column stride."""
    wide = _rand(6, 49152 + 5, dtype=dtype, seed=8)
    wide[1, 7] = wide[1, 40000] = wide[1, 49155] = 50.0  # equal maxima in different lanes and in the tail
    wide[2] = 0.0  # every column ties: the first wins
    wide[3] = float("-inf")
    wide[3, 49156] = -1e30  # the only finite value, in the tail
    wide[4, 300] = float("nan")  # a NaN is the maximum, as in torch.argmax
    wide[4, 100] = float("nan")
    wide[5, 49153] = 99.0  # the maximum in the tail, past the vectors
    return [("wide", wide), ("strided", wide[:, :1000]), ("short", _rand(3, 5, dtype=dtype, seed=9)),
            ("one column", _rand(4, 1, dtype=dtype, seed=10)), ("short ties", torch.zeros(2, 7, dtype=dtype))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("build", ["native", "avx2"])
def test_argmax_equals_torch(dtype, build):
    library = native.load(isa="avx2") if build == "avx2" else LIBRARY
    if library is None:
        pytest.skip("no AVX2 build on this CPU")
    for name, logits in _argmax_cases(dtype):
        assert torch.equal(native_ops.argmax(logits, library=library), logits.argmax(dim=-1)), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_write_kv_cache_equals_twin_bit_for_bit(dtype):
    """One native pass rotates q and k (views into a fused qkv output) and fills only the mapped slots."""
    rows, hq, hkv, head_dim, block_size = 45, 9, 3, 64, 16
    slots = torch.randperm(6 * block_size, generator=torch.Generator().manual_seed(11))[:rows]
    slots[[3, 17]] = -1
    qkv = _rand(rows, (hq + 2 * hkv) * head_dim, dtype=dtype, seed=12)
    cos_sin = _rand(512, head_dim, dtype=dtype, seed=13)
    positions = torch.randint(0, 512, (rows,), generator=torch.Generator().manual_seed(14))
    results = []
    for ops in (native_ops, torch_ops):
        buf = qkv.clone()
        q, k, v = (t.view(rows, -1, head_dim) for t in buf.split([hq * head_dim, hkv * head_dim, hkv * head_dim], 1))
        caches = [torch.full((6, block_size, hkv, head_dim), float("nan"), dtype=dtype) for _ in range(2)]
        ops.rotary_write_kv_cache(positions, q, k, v, cos_sin, True, *caches, slots)
        results.append((buf, *caches))
    for native_result, twin_result in zip(*results):
        assert torch.equal(native_result.nan_to_num(7.0), twin_result.nan_to_num(7.0))
    assert results[0][1].isnan().any()  # the unmapped slots were left alone


def test_rotary_write_kv_cache_refuses_a_slot_past_the_cache():
    q, k, v = (_rand(2, h, 64, dtype=torch.float32, seed=h) for h in (9, 3, 3))
    caches = [torch.zeros(2, 16, 3, 64) for _ in range(2)]
    with pytest.raises(IndexError):
        native_ops.rotary_write_kv_cache(torch.tensor([0, 1]), q, k, v, _rand(8, 64, dtype=torch.float32, seed=1),
                                         True, *caches, torch.tensor([0, 32]))
