"""The native linear (kernels/csrc/linear.cpp) against a float64 matmul (fp32, every build this CPU can run) and
against fp32 sums rounded once (bf16, AVX512_BF16 builds)."""
import dataclasses

import pytest
import torch

from tide.engine.models.cpu_linear import NativeLinear, PackedLinear, pack_linears
from tide.kernels import native, native_linear

LIBRARY = native.load()
pytestmark = pytest.mark.skipif(LIBRARY is None, reason=f"native library unavailable: {native.status()}")

# (rows, in, out): a partial last panel (out not a multiple of the panel width), odd in-features, row counts around
# the 14-row tile and one past a prefill chunk (in 1536: 6 blocks of 14 rows a chunk).
SHAPES = [(1, 576, 960), (13, 70, 100), (14, 16, 33), (15, 96, 160), (64, 576, 3072), (200, 1536, 64), (0, 32, 48)]


def _library(build: str) -> native.NativeLibrary:
    library = {"native": LIBRARY, "avx2": native.load(isa="avx2"), "sixteen-wide": native.load(vector_width=16)}[build]
    if library is None:
        pytest.skip(f"no {build} build on this CPU")
    return library


def _weights(rows: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)


@pytest.mark.parametrize("build", ["native", "avx2", "sixteen-wide"])
@pytest.mark.parametrize("rows,k,n", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_float64(build, rows, k, n, bias):
    library = _library(build)
    x, w, b = _weights(rows, k, n, seed=rows + k + n)
    out = native_linear.linear(x, native_linear.pack_weight(w, library), n, b if bias else None, library)
    expected = x.double() @ w.double().T + (b.double() if bias else 0)
    assert out.shape == (rows, n) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-4 * k ** 0.5, rtol=1e-5)


@pytest.mark.skipif(not native_linear.serves(LIBRARY, torch.bfloat16, 2), reason="no vdpbf16ps linear on this CPU")
@pytest.mark.parametrize("rows,k,n", [shape for shape in SHAPES if shape[1] % 2 == 0])
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_linear_is_the_fp32_sum_rounded_once(rows, k, n, bias):
    x, w, b = (t.bfloat16() for t in _weights(rows, k, n, seed=rows + k + n))
    out = native_linear.linear(x, native_linear.pack_weight(w, LIBRARY), n, b if bias else None, LIBRARY)
    exact = x.double() @ w.double().T + (b.double() if bias else 0)
    assert out.shape == (rows, n) and out.dtype == torch.bfloat16
    # Within one bf16 rounding of the exact sum (fp32 sums in another order may land on the other side of a tie).
    torch.testing.assert_close(out.double(), exact, atol=1e-4 * k ** 0.5, rtol=2 ** -8)
    assert (out.double() - exact.bfloat16().double()).abs().le(exact.abs() * 2 ** -7 + 1e-3 * k ** 0.5).all()


def test_bf16_needs_the_dot_product_build():
    """Builds without vdpbf16ps tiles (and odd widths) raise rather than compute something else."""
    w, x = torch.randn(8, 16).bfloat16(), torch.randn(3, 16).bfloat16()
    for library in (native.load(isa="avx2"), native.load(isa="avx512")):
        if library is None:
            continue
        assert not native_linear.serves(library, torch.bfloat16, 16)
        with pytest.raises(ValueError, match="does not run"):
            native_linear.linear(x, native_linear.pack_weight(w, library), 8, None, library)
    assert not native_linear.serves(LIBRARY, torch.bfloat16, 15)


def test_bf16_stays_on_onednn_where_the_cpu_has_amx():
    assert native_linear.bf16_pays({"avx512f", "avx512_bf16"})
    assert not native_linear.bf16_pays({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})


def test_rows_do_not_depend_on_the_batch():
    """A row's result is the same bits alone or among 63 others: each output is one FMA chain over k in order."""
    x, w, _ = _weights(64, 576, 960, seed=5)
    packed = native_linear.pack_weight(w, LIBRARY)
    together = native_linear.linear(x, packed, 960, None, LIBRARY)
    for i in (0, 13, 27, 63):
        assert torch.equal(native_linear.linear(x[i:i + 1], packed, 960, None, LIBRARY), together[i:i + 1])


def test_strided_rows_and_leading_dims():
    """x may be a view with a row stride wider than its width, and have leading dimensions."""
    wide, w, _ = _weights(24, 100, 40, seed=6)
    x = wide[:, :64]
    packed = native_linear.pack_weight(w[:, :64].contiguous(), LIBRARY)
    out = native_linear.linear(x.view(2, 12, 64), packed, 40, None, LIBRARY)
    torch.testing.assert_close(out, (x @ w[:, :64].T).view(2, 12, 40), atol=1e-4, rtol=1e-5)


def test_wrong_inputs_raise():
    packed = native_linear.pack_weight(torch.randn(8, 16), LIBRARY)
    with pytest.raises(ValueError, match="float32 CPU rows of 16"):
        native_linear.linear(torch.randn(3, 16, dtype=torch.bfloat16), packed, 8, None, LIBRARY)
    with pytest.raises(ValueError, match="rows of 16"):
        native_linear.linear(torch.randn(3, 15), packed, 8, None, LIBRARY)
    with pytest.raises(ValueError, match="bias of 8"):
        native_linear.linear(torch.randn(3, 16), packed, 8, torch.randn(7), LIBRARY)
    with pytest.raises(ValueError, match="2-D fp32 or bf16"):
        native_linear.pack_weight(torch.randn(8, 16, dtype=torch.float64), LIBRARY)


def test_pack_linears_picks_the_kernel_by_dtype_and_library():
    """Layers go to the native kernel where the library serves their dtype (fp32 on AVX-512, bf16 with vdpbf16ps);
    everything else, and a model packed without a library, stays on oneDNN."""
    def model(dtype):
        return torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Linear(48, 16)).to(dtype)

    for dtype in (torch.float32, torch.bfloat16):
        layers = model(dtype)
        pack_linears(layers, LIBRARY)
        expected = NativeLinear if native_linear.serves(LIBRARY, dtype, 32) else PackedLinear
        assert all(isinstance(layer, expected) for layer in layers), dtype
    plain = model(torch.float32)
    pack_linears(plain)
    assert all(isinstance(layer, PackedLinear) for layer in plain)
    assert not native_linear.serves(native.load(isa="avx2"), torch.float32, 32)


SCREENS = native_linear.screens(LIBRARY, torch.zeros(2, 2))
needs_screen = pytest.mark.skipif(not SCREENS, reason="no vdpbf16ps linear on this CPU")


def _near_ties(n: int, k: int, seed: int) -> torch.Tensor:
    """A vocabulary whose rows come in near-copies (one coordinate nudged by ~1e-3) and exact copies (row j + 1
    equal to row j), so that rows' top scores differ by less than the bf16 estimate's error, or not at all."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[1::4] = w[0::4]
    w[2::4] = w[0::4]
    w[2::4, 0] += 1e-3 * torch.randn(n // 4, generator=g)
    return w


@needs_screen
@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
def test_argmax_screen_gives_the_exact_argmax(scale):
    """Over near-ties and exact ties the screened scores' argmax (first among equals) is the fp32 product's: the
    entries that can be a row's largest are the fp32 product's bits, every other one is below the row's maximum.
    Taken without its bounds, the bf16 estimate picks another token in some of these rows."""
    k, n = 576, 4096
    w = _near_ties(n, k, seed=int(scale * 10))
    x = torch.randn(96, k, generator=torch.Generator().manual_seed(1)) * scale
    packed = native_linear.pack_weight(w, LIBRARY)
    screen = native_linear.ArgmaxScreen.build(w, LIBRARY)
    full = native_linear.linear(x, packed, n, None, LIBRARY)
    scores = native_linear.argmax_logits(x, packed, screen, LIBRARY)
    assert torch.equal(scores.argmax(dim=1), full.argmax(dim=1))
    top = full.max(dim=1, keepdim=True).values
    exact = scores == full
    assert (exact | (scores < top)).all()
    assert exact.gather(1, full.argmax(dim=1, keepdim=True)).all()
    # without the bounds (each row's best estimate taken as it is) some rows get another token
    unbounded = native_linear.argmax_logits(x, packed, dataclasses.replace(screen, c=0.0), LIBRARY)
    assert (unbounded.argmax(dim=1) != full.argmax(dim=1)).sum() >= 5


@needs_screen
def test_bf16_estimate_stays_within_the_screens_bound():
    """|estimate - fp32 product| <= c |x| |w_j| for every entry, with room to spare (the bound the screen rests on)."""
    g = torch.Generator().manual_seed(3)
    k, n = 1536, 512
    w, x = torch.randn(n, k, generator=g), torch.randn(64, k, generator=g) * torch.rand(64, 1, generator=g) * 10
    screen = native_linear.ArgmaxScreen.build(w, LIBRARY)
    full = native_linear.linear(x, native_linear.pack_weight(w, LIBRARY), n, None, LIBRARY)
    estimate = native_linear.linear(x.bfloat16(), screen.packed_bf16, n, None, LIBRARY, out_dtype=torch.float32)
    bound = screen.c * x.double().norm(dim=1, keepdim=True) * screen.wnorm.double()
    error = (estimate.double() - full.double()).abs()
    assert (error <= bound).all()
    assert error.max() > 0 and (error / bound).max() < 0.5


@needs_screen
def test_argmax_screen_refuses_rows_that_are_not_finite():
    w = torch.randn(64, 32)
    packed, screen = native_linear.pack_weight(w, LIBRARY), native_linear.ArgmaxScreen.build(w, LIBRARY)
    for bad in (float("nan"), float("inf")):
        x = torch.randn(3, 32)
        x[1, 5] = bad
        assert native_linear.argmax_logits(x, packed, screen, LIBRARY) is None
    head = NativeLinear(torch.nn.Linear(32, 64, bias=False), LIBRARY, screened=True)
    x = torch.randn(3, 32)
    x[0, 0] = float("nan")
    torch.testing.assert_close(head.argmax_logits(x), head(x), equal_nan=True, rtol=0, atol=0)  # the full product


@pytest.mark.skipif(not native_linear.serves(LIBRARY, torch.float32, 32), reason="fp32 linears stay on oneDNN here")
def test_only_the_vocabulary_head_gets_a_screen():
    layers = torch.nn.Sequential(torch.nn.Linear(32, 48, bias=False), torch.nn.Linear(48, 160, bias=False))
    pack_linears(layers, LIBRARY, head=layers[1])
    assert layers[0].screen is None
    assert (layers[1].screen is not None) == SCREENS
    bf16 = torch.nn.Sequential(torch.nn.Linear(32, 48, bias=False)).bfloat16()
    pack_linears(bf16, LIBRARY, head=bf16[0])
    assert getattr(bf16[0], "screen", None) is None  # a bf16 head is already at bf16 cost
    assert not native_linear.screens(native.load(isa="avx2"), torch.zeros(4, 4))


def _dtypes() -> list[torch.dtype]:
    return [torch.float32] + ([torch.bfloat16] if native_linear.serves(LIBRARY, torch.bfloat16, 2) else [])


@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("rows", [1, 13, 64, 200])
@pytest.mark.parametrize("bias", [False, True])
def test_gated_weight_gives_the_plain_product_and_its_silu(dtype, rows, bias):
    """A gate/up weight packed gated gives the plain packing's product bit for bit, in its own column order, and
    silu_and_mul the bits of the separate op (native_ops.silu_and_mul) over that product."""
    from tide.kernels import native_ops

    x, w, b = (t.to(dtype) for t in _weights(rows, 576, 2 * 1536, seed=rows))
    b = b if bias else None
    plain = native_linear.linear(x, native_linear.pack_weight(w, LIBRARY), 3072, b, LIBRARY)
    gated = native_linear.pack_weight(w, LIBRARY, gated=True)
    assert torch.equal(native_linear.linear(x, gated, 3072, b, LIBRARY, gated=True), plain)
    fused = native_linear.silu_and_mul(x, gated, 3072, b, LIBRARY)
    assert fused.shape == (rows, 1536) and fused.dtype == dtype
    assert torch.equal(fused, native_ops.silu_and_mul(plain))


def test_gated_packing_needs_halves_of_whole_vectors():
    panel = LIBRARY.lib.tide_linear_panel_width()  # two vectors: a gate half and an up half
    with pytest.raises(ValueError, match="gated weight"):
        native_linear.pack_weight(torch.randn(panel + 2, 16), LIBRARY, gated=True)
    assert not native_linear.gates(LIBRARY, torch.zeros(panel + 2, 16))
    assert native_linear.gates(LIBRARY, torch.zeros(2 * panel, 16))


@pytest.mark.skipif(not native_linear.serves(LIBRARY, torch.float32, 32), reason="fp32 linears stay on oneDNN here")
def test_pack_linears_packs_the_named_gate_up_projection_gated():
    from tide.engine.models.cpu_linear import GatedNativeLinear

    class Mlp(torch.nn.Module):
        gated_projection = "gate_up"

        def __init__(self):
            super().__init__()
            self.gate_up, self.down = torch.nn.Linear(32, 64), torch.nn.Linear(32, 32)

    mlp = Mlp()
    pack_linears(mlp, LIBRARY)
    assert isinstance(mlp.gate_up, GatedNativeLinear) and type(mlp.down) is NativeLinear
