"""int8 weight-only quantization: the linear against the float matmul, the GGUF Q8_0 path, config validation, and
SmolLM2's int8 greedy tokens against bf16's."""
import shutil

import numpy as np
import pytest
import torch
from gguf import MODEL_ARCH, GGMLQuantizationType, GGUFWriter, get_tensor_name_map, quantize
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from tests.helpers.prompts import CHATS
from tide.benchmarks.quant import agreement
from tide.engine import LLM, EngineConfig
from tide.engine.gguf_int8 import int8_rows, write_int8_weights
from tide.engine.loader import _cache_key, _source_stamp
from tide.engine.models.quant_linear import INT8_MM_MAX_TOKENS, Int8Linear, quantize_rows


def test_quantize_rows_is_within_half_a_step_of_the_weight():
    torch.manual_seed(0)
    w = torch.randn(48, 96) * torch.rand(48, 1) * 3
    w[5] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (48,)
    assert q.abs().max() == 127 and (q[5] == 0).all()
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("tokens", [3, INT8_MM_MAX_TOKENS + 5], ids=["int8-mm", "widened"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_matches_the_float_matmul_within_the_quantization_bound(tokens, dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(160, 96, bias=True).to(dtype)
    x = torch.randn(tokens, 160).to(dtype)
    module = Int8Linear.from_float(linear)
    y = module(x)
    assert y.dtype == dtype and y.shape == (tokens, 96)
    xf, w = x.float(), linear.weight.float()
    ref = xf @ w.T + linear.bias.float()
    # Weight rounding moves each product by at most half a step; bf16 activations/outputs add ~2^-8 relative each.
    bound = 0.5 * module.weight_scale * xf.abs().sum(1, keepdim=True) + 2 ** -7 * (xf.abs() @ w.abs().T + ref.abs())
    err = (y.float() - ref).abs()
    assert (err <= bound).all(), float((err - bound).max())
    assert err.mean() < 0.05 * ref.abs().mean()  # and far from a wrong result that only happens to be bounded


def test_int8_rows_of_a_q8_0_tensor_keep_the_int8_values_of_each_row_largest_block():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 128)) * rng.uniform(0.1, 2.0, (8, 4)).repeat(32, axis=1)).astype(np.float32)
    raw = quantize(w, GGMLQuantizationType.Q8_0)  # [8 rows, 4 blocks x (2-byte fp16 scale + 32 int8)]
    blocks = raw.reshape(8, 4, 34)
    d = blocks[:, :, :2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[:, :, 2:].copy().view(np.int8)
    q, scale = int8_rows(raw, GGMLQuantizationType.Q8_0)
    top = np.abs(d).argmax(axis=1)
    for row in range(8):
        assert np.array_equal(q[row].numpy().reshape(4, 32)[top[row]], qs[row, top[row]])
        assert scale[row].item() == pytest.approx(abs(d[row, top[row]]) * np.abs(qs[row, top[row]]).max() / 127)
    assert (q.float() * scale[:, None] - torch.from_numpy(w)).abs().max() < 2 * scale.max()


def test_quantization_must_be_none_or_int8():
    with pytest.raises(ValueError, match="quantization must be none or int8, got 'int4'"):
        EngineConfig(quantization="int4")
    for placement in ({"tensor_parallel_size": 2}, {"offload_max_resident_layers": 2}):
        with pytest.raises(ValueError, match="quantization cannot be combined"):
            EngineConfig(quantization="int8", **placement)


def test_int8_conversions_are_cached_apart_from_float_ones(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    assert _cache_key(_source_stamp(gguf, "int8")) == _cache_key(_source_stamp(gguf, "none")) + "-int8"


def _write_q8_0_gguf(model_dir, path) -> None:
    """The tiny HF model as a llama GGUF: projections and embeddings in Q8_0, q/k rows permuted as llama.cpp does."""
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    table = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    writer = GGUFWriter(path, "llama")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for name, tensor in model.state_dict().items():
        module, suffix = name.rsplit(".", 1)
        array = tensor.numpy()
        if module.endswith("q_proj") or module.endswith("k_proj"):
            n = heads if module.endswith("q_proj") else kv_heads
            array = array.reshape(n, 2, array.shape[0] // n // 2, -1).swapaxes(1, 2).reshape(array.shape)
        if array.ndim == 2:
            writer.add_tensor(f"{table.get_name(module)}.{suffix}", quantize(array, GGMLQuantizationType.Q8_0),
                              raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(f"{table.get_name(module)}.{suffix}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_q8_0_gguf_loads_as_int8_projections_and_generates(tiny_model_dir, tmp_path):
    source = tiny_model_dir("llama")
    gguf = tmp_path / "tiny.Q8_0.gguf"
    _write_q8_0_gguf(source, gguf)
    out = tmp_path / "int8"
    out.mkdir()
    write_int8_weights(gguf, AutoConfig.from_pretrained(source), out)
    for file in source.iterdir():  # config and tokenizer as the loader would write them from the GGUF
        if file.suffix != ".safetensors":
            shutil.copy(file, out / file.name)

    original, converted = load_file(source / "model.safetensors"), load_file(out / "model.safetensors")
    for name, weight in original.items():
        if name.startswith("model.layers.") and name.endswith("_proj.weight"):
            q, scale = converted[name], converted[f"{name}_scale"]
            assert q.dtype == torch.int8
            # Q8_0 rounding (half a block step) plus the per-row requantization (half a row step).
            assert ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] + 1e-6).all(), name
        else:
            assert converted[name].dtype == torch.float32
            torch.testing.assert_close(converted[name], weight, atol=weight.abs().max().item() / 100, rtol=0)

    # The random tiny model has many near-ties, so the bar is lower than SmolLM2's; un-permuted q/k rows or
    # misplaced scales would drift by whole nats.
    prompts = [[{"role": "user", "content": c}] for c in CHATS[:4]]
    result = agreement(LLM(model=str(source), dtype="float32"),
                       LLM(model=str(out), dtype="float32", quantization="int8"), prompts, max_new=8)
    assert result.token_agreement >= 0.75 and result.mean_drift < 0.15, result
    with pytest.raises(ValueError, match="holds int8 weights; load it with quantization int8"):
        LLM(model=str(out), dtype="float32")


def test_smollm2_int8_greedy_agrees_with_bf16(smollm2_dir):
    bf16 = LLM(model=str(smollm2_dir), dtype="bfloat16")
    int8 = LLM(model=str(smollm2_dir), dtype="bfloat16", quantization="int8")
    layer = int8.engine.runner.model.layers[0]
    assert isinstance(layer.mlp.gate_up_proj, Int8Linear) and layer.mlp.gate_up_proj.weight.dtype == torch.int8
    prompts = [[{"role": "user", "content": c}] for c in CHATS]
    result = agreement(bf16, int8, prompts, max_new=16)
    print(f"int8 vs bf16 on SmolLM2: {result}")
    assert result.token_agreement >= 0.9
    assert result.mean_drift < 0.1
