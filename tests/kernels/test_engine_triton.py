"""The whole engine on tiny random models yields the same greedy tokens with the Triton kernels (interpreter, or a
GPU) as with the PyTorch twins."""
import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from tests.helpers.kernel_device import DEVICE

pytest.importorskip("tide.engine.llm_engine")
from tide.engine import LLM, SamplingParams  # noqa: E402

SHAPE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.5, bos_token_id=1,
             eos_token_id=2, pad_token_id=0)
MODELS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SHAPE)),
    # Qwen3 adds per-head q/k RMSNorm (rms_norm on [T, heads, D]) and a head_dim of its own.
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**SHAPE, head_dim=32)),
}
# A shared 32-token prefix (two full blocks, reused from the prefix cache), odd lengths, a single-token prompt.
PREFIX = list(range(10, 42))
PROMPTS = [PREFIX + [50, 51, 52], list(range(100, 105)), PREFIX + list(range(60, 71)), [7], list(range(3, 44))]


def save_tiny_model(kind: str, path) -> str:
    torch.manual_seed(0)
    MODELS[kind]().save_pretrained(path, safe_serialization=True)
    vocab = {f"t{i}": i for i in range(SHAPE["vocab_size"])}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                        unk_token="t0", pad_token="t0", bos_token="t1", eos_token="t2")
    tokenizer.save_pretrained(path)
    return str(path)


def greedy_tokens(model_dir: str, backend: str, monkeypatch) -> list[list[int]]:
    monkeypatch.setenv("TIDE_KERNELS", backend)
    # A small token budget splits the longer prompts into chunks that attend to their cached prefix, and mixes
    # them with decodes of the shorter ones.
    llm = LLM(model=model_dir, dtype="float32", device=DEVICE.type, kv_cache_bytes=1 << 20, max_num_batched_tokens=16,
              max_num_seqs=4)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    return [out.outputs[0].token_ids for out in llm.generate(PROMPTS, params)]


@pytest.mark.parametrize("kind", list(MODELS))
def test_triton_and_torch_kernels_generate_the_same_tokens(kind, tmp_path, monkeypatch):
    model_dir = save_tiny_model(kind, tmp_path)
    torch_tokens = greedy_tokens(model_dir, "torch", monkeypatch)
    triton_tokens = greedy_tokens(model_dir, "triton", monkeypatch)
    assert all(len(tokens) == 8 for tokens in torch_tokens)
    assert triton_tokens == torch_tokens
