"""Model resolution, GGUF conversion caching, and the shared model fixtures."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from tide.engine import loader
from tide.engine.loader import MODEL_ALIASES, iter_weights, load_config, load_tokenizer, resolve_model

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def fake_converter(monkeypatch):
    """Replace the (slow, real) GGUF conversion with one that writes a minimal directory and counts its calls."""
    calls: list[Path] = []

    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(gguf)
        time.sleep(0.1)  # widen the window in which concurrent callers could race
        (out_dir / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
        save_file({"w": torch.zeros(2)}, out_dir / "model.safetensors")

    monkeypatch.setattr(loader, "_convert_gguf", convert)
    return calls


@pytest.fixture
def gguf_file(tmp_path) -> Path:
    path = tmp_path / "src" / "toy.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF not really")
    return path


def test_alias_is_converted_once_then_served_from_cache(smollm2_dir, monkeypatch):
    marker_mtime = (smollm2_dir / loader.MARKER_FILE).stat().st_mtime_ns

    def must_not_convert(gguf, out_dir):
        raise AssertionError("a cached model was converted again")

    monkeypatch.setattr(loader, "_convert_gguf", must_not_convert)
    assert resolve_model("smollm2-135m") == smollm2_dir
    assert (smollm2_dir / loader.MARKER_FILE).stat().st_mtime_ns == marker_mtime


def test_gguf_path_shares_the_alias_conversion(smollm2_dir, monkeypatch):
    monkeypatch.setattr(loader, "_convert_gguf", None)  # calling it would fail: the cache must answer
    assert resolve_model(str(MODEL_ALIASES["smollm2-135m"].path())) == smollm2_dir


def test_converted_smollm2_is_a_complete_hf_directory(smollm2_dir):
    config = load_config(smollm2_dir)
    assert config.architectures == ["LlamaForCausalLM"]
    assert config.tie_word_embeddings and not hasattr(config, "quantization_config")
    assert (smollm2_dir / "generation_config.json").is_file()
    names = {name: tensor.dtype for name, tensor in iter_weights(smollm2_dir)}
    assert "lm_head.weight" not in names  # tied: the head reads model.embed_tokens.weight
    assert len(names) == 2 + 9 * config.num_hidden_layers
    assert set(names.values()) == {torch.float32}


def test_converted_smollm2_answers_correctly_in_transformers(smollm2_dir):
    tokenizer = load_tokenizer(smollm2_dir)
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert "<|im_start|>assistant" in tokenizer.decode(prompt["input_ids"][0])
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])


def test_hf_directory_is_returned_as_is(tiny_model_dir):
    path = tiny_model_dir("llama")
    assert resolve_model(str(path)) == path.resolve()


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"config\.json"):
        resolve_model(str(tmp_path))


def test_unknown_name_lists_aliases_and_forms():
    with pytest.raises(ValueError) as err:
        resolve_model("no-such-model")
    message = str(err.value)
    assert "'no-such-model'" in message and "smollm2-135m" in message and ".gguf" in message


def test_gguf_conversion_is_cached_and_redone_when_file_changes(fake_converter, gguf_file, tmp_path):
    cache = tmp_path / "cache"
    first = resolve_model(str(gguf_file), cache_dir=cache)
    assert resolve_model(str(gguf_file), cache_dir=cache) == first
    assert len(fake_converter) == 1
    gguf_file.write_bytes(b"GGUF a different file")
    assert resolve_model(str(gguf_file), cache_dir=cache) != first
    assert len(fake_converter) == 2


def test_a_new_conversion_removes_the_ones_nothing_can_ask_for_again(fake_converter, gguf_file, tmp_path):
    cache = tmp_path / "cache"
    gone = tmp_path / "src" / "deleted.gguf"
    gone.write_bytes(b"GGUF from a removed package")
    other = tmp_path / "src" / "other.gguf"
    other.write_bytes(b"GGUF another model")
    from_deleted, from_other = resolve_model(str(gone), cache_dir=cache), resolve_model(str(other), cache_dir=cache)
    gone.unlink()
    first = resolve_model(str(gguf_file), cache_dir=cache)
    gguf_file.write_bytes(b"GGUF the reinstalled file")
    second = resolve_model(str(gguf_file), cache_dir=cache)
    assert not first.exists() and not from_deleted.exists()
    assert second.is_dir() and from_other.is_dir()
    assert resolve_model(str(other), cache_dir=cache) == from_other
    assert len(fake_converter) == 4


def test_cache_dir_comes_from_environment(fake_converter, gguf_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TIDE_CACHE_DIR", str(tmp_path / "env-cache"))
    assert resolve_model(str(gguf_file)).parent == tmp_path / "env-cache" / "models"


def test_half_written_cache_dir_is_not_trusted(fake_converter, gguf_file, tmp_path):
    cache = tmp_path / "cache"
    target = resolve_model(str(gguf_file), cache_dir=cache)
    (target / loader.MARKER_FILE).unlink()  # as if a copy or an older tool stopped halfway
    assert resolve_model(str(gguf_file), cache_dir=cache) == target
    assert len(fake_converter) == 2
    assert (target / loader.MARKER_FILE).is_file()


def test_failed_conversion_leaves_nothing_that_counts_as_cached(gguf_file, tmp_path, monkeypatch):
    def crash(gguf, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(loader, "_convert_gguf", crash)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError):
        resolve_model(str(gguf_file), cache_dir=cache)
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_resolves_convert_once(fake_converter, gguf_file, tmp_path):
    cache = tmp_path / "cache"
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model(str(gguf_file), cache_dir=cache)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert len(fake_converter) == 1


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "mistral", "llama3_rope"])
def test_tiny_models_generate_varied_text(tiny_model_dir, kind):
    path = tiny_model_dir(kind)
    config = load_config(path)
    assert config.architectures and config.architectures[0].endswith("ForCausalLM")
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for prompt in ["Hello, my name is", "The capital of France is", "1 2 3 4"]:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
        assert len(set(out.tolist())) >= 8, f"{kind}: greedy output too repetitive: {out.tolist()}"


def test_tiny_models_have_their_architecture_features(tiny_model_dir):
    weights = {kind: {name for name, _ in iter_weights(tiny_model_dir(kind))} for kind in ("qwen2", "qwen3", "llama")}
    assert "model.layers.0.self_attn.q_proj.bias" in weights["qwen2"]
    assert "model.layers.0.self_attn.q_norm.weight" in weights["qwen3"]
    assert "lm_head.weight" in weights["llama"] and "lm_head.weight" not in weights["qwen2"]
    assert load_config(tiny_model_dir("qwen3")).head_dim == 32
    assert load_config(tiny_model_dir("llama3_rope")).rope_parameters["rope_type"] == "llama3"
    assert load_config(tiny_model_dir("llama")).num_key_value_heads == 2


def test_alias_with_missing_package_says_how_to_install():
    alias = loader.PackagedModel(package="tide_no_such_package", filename="x.gguf", install_hint="pip install x==1")
    with pytest.raises(ValueError, match=r"pip install x==1"):
        alias.path()
