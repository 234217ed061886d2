"""LoRA adapters per request: greedy fp32 output equals the adapter merged into the weights and PEFT's `PeftModel`,
rows of different adapters (and none) share steps without touching each other, and bad adapters are refused by name."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.helpers.hf_reference import compare_greedy, hf_greedy
from tests.helpers.lora import ALL_LINEAR, make_adapter, merged_model, peft_model
from tests.helpers.models import kv_bytes_for
from tests.helpers.prompts import CHATS, make_prompts
from tide.engine import LLM, SamplingParams
from tide.engine.request import tokenize_prompt

MAX_NEW = 12
# name -> (rank, target modules (None: PEFT's default, q_proj and v_proj), rslora)
ADAPTERS = {"all8": (8, ALL_LINEAR, False), "qv64": (64, None, False), "mlp16": (16, ["gate_proj", "down_proj"], True)}
MODES = {
    "default": dict(),
    "chunked": dict(max_num_batched_tokens=7),
    "no_prefix_cache": dict(enable_prefix_caching=False),
    "preempt": dict(kv_cache_bytes="tiny"),
    "one_resident": dict(max_loras=1),
    # the target verifies drafted tokens with each row's adapter, so drafts never change what a row gets
    "ngram_speculation": dict(speculative="ngram", spec_max_running=64, spec_ngram_min=1),
}


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def setup(request, tiny_model_dir, tmp_path_factory):
    """(model_dir, {adapter name: directory}, prompts, {adapter name or None: greedy references per prompt})."""
    model_dir = tiny_model_dir(request.param)
    root = tmp_path_factory.mktemp(f"lora-{request.param}")
    dirs = {name: make_adapter(model_dir, root / name, r, seed=i, targets=targets, rslora=rslora)
            for i, (name, (r, targets, rslora)) in enumerate(ADAPTERS.items())}
    prompts = make_prompts(49152)[2:]  # a few lengths, two sharing a cached prefix
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    refs = {None: [hf_greedy(base, p, MAX_NEW) for p in prompts]}
    for name, path in dirs.items():
        refs[name] = [hf_greedy(merged_model(model_dir, path), p, MAX_NEW) for p in prompts]
        assert [t for t, _ in refs[name]] != [t for t, _ in refs[None]], f"adapter {name} changes nothing"
    return model_dir, dirs, prompts, refs


def _greedy(lora=None, **extra) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=5, lora=lora, **extra)


def test_peft_model_agrees_with_the_merged_reference(setup):
    """The two references agree with each other, so either is the adapter's true output."""
    model_dir, dirs, prompts, refs = setup
    for name, path in dirs.items():
        peft = peft_model(model_dir, path)
        assert [hf_greedy(peft, p, MAX_NEW)[0] for p in prompts] == [t for t, _ in refs[name]], name


@pytest.mark.parametrize("mode", list(MODES))
def test_mixed_batch_matches_each_reference(setup, mode):
    """Every prompt under every adapter and under none, all in one batch: each row gets its merged reference."""
    model_dir, dirs, prompts, refs = setup
    config = dict(MODES[mode])
    if config.get("kv_cache_bytes") == "tiny":
        config["kv_cache_bytes"] = kv_bytes_for(model_dir, 16 * 8)  # 8 blocks: growing decodes must preempt
    llm = LLM(model=str(model_dir), dtype="float32", lora_adapters={k: str(v) for k, v in dirs.items()},
              max_lora_rank=64, **config)
    names = [None, *dirs]
    jobs = [(name, i) for i in range(len(prompts)) for name in names]  # adapters interleaved row by row
    outputs = llm.generate([prompts[i] for _, i in jobs], [_greedy(name) for name, _ in jobs])
    for (name, i), out in zip(jobs, outputs):
        assert out.error is None, out.error
        assert compare_greedy(out, *refs[name][i]) == 0, f"adapter {name}, prompt {i}: a near-tie flipped"
    registry = llm.engine.adapters
    assert len(registry.resident) <= config.get("max_loras", 8)
    if mode == "one_resident":
        assert registry.loads > len(dirs)  # adapters were evicted and read again
    if mode == "preempt":
        assert llm.engine.stats.preemptions > 0
    if mode == "ngram_speculation":
        assert llm.engine.speculator.num_proposed > 0  # drafts were verified under adapters


def test_prefix_cache_is_not_shared_across_adapters(setup):
    """The same prompt under the base model, then under an adapter: no cached block crosses over."""
    model_dir, dirs, prompts, refs = setup
    llm = LLM(model=str(model_dir), dtype="float32", lora_adapters={"all8": str(dirs["all8"])})
    prompt = prompts[-1]  # 40 tokens: two full blocks
    first = llm.generate([prompt], _greedy())[0]
    again = llm.generate([prompt], _greedy())[0]
    adapted = llm.generate([prompt], _greedy("all8"))[0]
    assert again.metrics.cached_prompt_tokens == 32  # the base run's blocks serve the base model
    assert adapted.metrics.cached_prompt_tokens == 0
    assert compare_greedy(first, *refs[None][-1]) == 0
    assert compare_greedy(adapted, *refs["all8"][-1]) == 0


def test_adapter_named_by_directory_and_n_samples(setup):
    """A request may name an adapter by its directory; n greedy samples all follow the adapter."""
    model_dir, dirs, prompts, refs = setup
    llm = LLM(model=str(model_dir), dtype="float32", max_lora_rank=64)
    out = llm.generate([prompts[0]], _greedy(str(dirs["qv64"]), n=3))[0]
    ref_tokens = [t for t, _ in [refs["qv64"][0]]][0]
    assert [s.token_ids for s in out.outputs] == [ref_tokens] * 3


def test_guided_rows_keep_their_adapter(setup):
    """A guided request under an adapter gives the same answer in a mixed batch as alone."""
    model_dir, dirs, prompts, _ = setup
    choices = {"choice": ["alpha", "beta", "gamma", "delta"]}
    llm = LLM(model=str(model_dir), dtype="float32", lora_adapters={k: str(v) for k, v in dirs.items()},
              max_lora_rank=64)
    guided = [SamplingParams(temperature=0.0, max_tokens=8, guided=choices, lora=name) for name in (None, *dirs)]
    alone = [llm.generate([prompts[1]], p)[0].outputs[0].text for p in guided]
    mixed = llm.generate([prompts[1]] * len(guided) + prompts, guided + [_greedy("all8")] * len(prompts))
    assert [o.outputs[0].text for o in mixed[:len(guided)]] == alone
    assert set(alone) <= set(choices["choice"])


def test_bad_adapters_are_refused_by_name(setup, tmp_path):
    model_dir, dirs, prompts, _ = setup
    llm = LLM(model=str(model_dir), dtype="float32", max_lora_rank=16, lora_adapters={"big": str(dirs["qv64"])})
    engine = llm.engine
    with pytest.raises(ValueError, match="unknown LoRA adapter 'nope'"):
        engine.add_request("r1", prompts[0], SamplingParams(lora="nope"))
    with pytest.raises(ValueError, match="adapter 'big' has rank 64, above this worker's limit of 16"):
        engine.add_request("r2", prompts[0], SamplingParams(lora="big"))
    with pytest.raises(ValueError, match="use_beam_search cannot be combined with a LoRA adapter"):
        engine.add_request("r3", prompts[0], SamplingParams(lora=str(dirs["all8"]), use_beam_search=True, n=2))
    lm_head = make_adapter(model_dir, tmp_path / "head", 4, seed=9, targets=["lm_head"])
    with pytest.raises(ValueError, match=r"target_modules \['lm_head'\] are not supported"):
        engine.add_request("r4", prompts[0], SamplingParams(lora=str(lm_head)))
    config = json.loads((dirs["all8"] / "adapter_config.json").read_text())
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora=True is not supported"):
        engine.add_request("r5", prompts[0], SamplingParams(lora=str(tmp_path / "dora")))
    assert not engine.has_unfinished()


def test_smollm2_with_random_adapters_of_rank_8_and_64(smollm2_dir, tmp_path):
    """SmolLM2-135M, fp32: two random adapters and the base model in one batch, each row equal to its reference."""
    adapters = {"r8": make_adapter(smollm2_dir, tmp_path / "r8", 8, seed=1, targets=ALL_LINEAR),
                "r64": make_adapter(smollm2_dir, tmp_path / "r64", 64, seed=2)}
    llm = LLM(model=str(smollm2_dir), dtype="float32", lora_adapters={k: str(v) for k, v in adapters.items()},
              max_lora_rank=64)
    chats = [[{"role": "user", "content": text}] for text in CHATS[1:3]]
    prompts = [tokenize_prompt(c, llm.tokenizer) for c in chats]
    jobs = [(name, p) for p in prompts for name in (None, *adapters)]
    outputs = llm.generate([p for _, p in jobs], [_greedy(name) for name, _ in jobs])
    references = {None: AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()}
    references |= {name: merged_model(smollm2_dir, path) for name, path in adapters.items()}
    for (name, prompt), out in zip(jobs, outputs):
        assert compare_greedy(out, *hf_greedy(references[name], prompt, MAX_NEW)) == 0, name
