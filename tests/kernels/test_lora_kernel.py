"""The LoRA update op (`add_lora`): native C++ and PyTorch twin against a float64 reference, rows of other slots
and of no adapter left alone, and each row's update the same whatever rows share its step."""
import pytest
import torch

from tide.kernels import native, native_ops, torch_ops
from tide.kernels.metadata import LoraRows

LIBRARY = native.load()
needs_native = pytest.mark.skipif(LIBRARY is None, reason=f"native library unavailable: {native.status()}")
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
SLOTS = 3


def fused_pair(in_features: int, part_widths: list[int], block: int, dtype: torch.dtype, seed: int):
    """a [slots, in, parts * block] and a block-diagonal b [slots, parts * block, out], as LoraSlots holds them; the
    last slot's rank is below `block` (its trailing columns and rows zero)."""
    g = torch.Generator().manual_seed(seed)
    parts, out = len(part_widths), sum(part_widths)
    a = torch.zeros(SLOTS, in_features, parts * block)
    b = torch.zeros(SLOTS, parts * block, out)
    for slot in range(SLOTS):
        rank = block if slot < SLOTS - 1 else block // 2
        start = 0
        for part, width in enumerate(part_widths):
            a[slot, :, part * block:part * block + rank] = torch.randn(in_features, rank, generator=g) / 8
            b[slot, part * block:part * block + rank, start:start + width] = torch.randn(rank, width, generator=g) / 8
            start += width
    columns = tuple(sum(part_widths[:p]) for p in range(parts + 1))
    return a.to(dtype), b.to(dtype), columns


def reference(x, y, a, b, row_slots: dict[int, int]) -> torch.Tensor:
    out = y.double().clone()
    for row, slot in row_slots.items():
        out[row] += (x[row].double() @ a[slot].double()) @ b[slot].double()
    return out


def lora_rows(row_slots: dict[int, int]) -> LoraRows:
    return LoraRows.from_slots([(slot, row, row + 1) for row, slot in row_slots.items()], torch.device("cpu"))


def batch(num_rows: int, in_features: int, out: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_rows, in_features, generator=g).to(dtype), torch.randn(num_rows, out, generator=g).to(dtype)


# (in_features, part widths): q/k/v-like, gate/up-like and one-part shapes.
SHAPES = [(96, [64, 32, 32]), (80, [48, 48]), (160, [96])]


def run_op(op, x, y, a, b, row_slots, columns, **kwargs) -> torch.Tensor:
    y = y.clone()
    op(x, y, a, b, lora_rows(row_slots), columns, **kwargs)
    return y


def mixed_rows(num_rows: int) -> dict[int, int]:
    """Rows of every slot, in runs and alone, with every fourth row under no adapter (absent)."""
    return {row: (row // 3) % SLOTS for row in range(num_rows) if row % 4 != 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_rows", [1, 7, 45])
def test_twin_matches_reference(dtype, shape, num_rows):
    in_features, widths = shape
    a, b, columns = fused_pair(in_features, widths, 16, dtype, seed=num_rows)
    x, y = batch(num_rows, in_features, sum(widths), dtype, seed=1)
    row_slots = mixed_rows(num_rows)
    got = run_op(torch_ops.add_lora, x, y, a, b, row_slots, columns)
    torch.testing.assert_close(got.double(), reference(x, y, a, b, row_slots), atol=TOLERANCE[dtype],
                               rtol=TOLERANCE[dtype])


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_rows", [1, 7, 45])
@pytest.mark.parametrize("vector_width", [None, 16])
def test_native_matches_reference(dtype, shape, num_rows, vector_width):
    in_features, widths = shape
    a, b, columns = fused_pair(in_features, widths, 16, dtype, seed=num_rows)
    x, y = batch(num_rows, in_features, sum(widths), dtype, seed=2)
    row_slots = mixed_rows(num_rows)
    got = run_op(native_ops.add_lora, x, y, a, b, row_slots, columns, library=native.load(vector_width))
    torch.testing.assert_close(got.double(), reference(x, y, a, b, row_slots), atol=TOLERANCE[dtype],
                               rtol=TOLERANCE[dtype])
    untouched = [row for row in range(num_rows) if row not in row_slots]
    assert torch.equal(got[untouched], y[untouched])  # rows of no adapter: bit for bit what the base layer gave


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_rows_update_does_not_depend_on_the_rows_beside_it(dtype):
    """Tiling differs with the number of rows per slot; each row's sums run in one order regardless."""
    in_features, widths = SHAPES[0]
    a, b, columns = fused_pair(in_features, widths, 16, dtype, seed=5)
    x, y = batch(40, in_features, sum(widths), dtype, seed=3)
    row_slots = mixed_rows(40)
    together = run_op(native_ops.add_lora, x, y, a, b, row_slots, columns, num_threads=2)
    for row in (0, 14, 38):
        alone = run_op(native_ops.add_lora, x[row:row + 1], y[row:row + 1], a, b, {0: row_slots[row]}, columns)
        assert torch.equal(alone[0], together[row])


@needs_native
def test_strided_input_rows_and_the_twin_for_shapes_the_library_cannot_serve():
    """x may be a view with a row stride; widths that are not whole vectors go to the twin, with the same result."""
    in_features, widths = 96, [64, 32, 32]
    a, b, columns = fused_pair(in_features, widths, 16, torch.float32, seed=7)
    wide, y = batch(9, 2 * in_features, sum(widths), torch.float32, seed=4)
    x = wide[:, :in_features]
    row_slots = mixed_rows(9)
    expected = reference(x, y, a, b, row_slots)
    got = run_op(native_ops.add_lora, x, y, a, b, row_slots, columns)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=2e-5)
    a8, b8, columns8 = fused_pair(in_features, [40, 24, 24], 8, torch.float32, seed=8)  # 24 rank columns, 40 wide
    x8, y8 = batch(9, in_features, 88, torch.float32, seed=5)
    got8 = run_op(native_ops.add_lora, x8, y8, a8, b8, row_slots, columns8)
    torch.testing.assert_close(got8.double(), reference(x8, y8, a8, b8, row_slots), atol=2e-5, rtol=2e-5)


def test_lora_rows_group_rows_by_slot():
    rows = LoraRows.from_slots([(2, 0, 3), (0, 3, 4), (2, 6, 8)], torch.device("cpu"))
    assert rows.order.tolist() == [3, 0, 1, 2, 6, 7]
    assert rows.spans == ((0, 0, 1), (2, 1, 6))
    assert rows.segments.tolist() == [[0, 0, 1], [2, 1, 6]]
