"""Every benchmark runs as `python -P -m tide.benchmarks.<name>` and explains itself; the shared workloads repeat
with their seed and keep their sizes; the quantization benchmark's memory probe runs in a process of its own."""
from __future__ import annotations

import ast
import importlib
import itertools
import random

import pytest

from tests.helpers.paths import REPO
from tide.benchmarks.embed_memory import Sample, at_tenths
from tide.benchmarks.quant import memory_figures
from tide.benchmarks.workloads import (
    CHAT_MAX_TOKENS,
    SHORT_EMBEDDING_MIX,
    build_workload,
    embedding_texts,
    grounded_prompts,
    iter_embedding_texts,
    random_token_prompts,
)
from tide.engine.loader import load_tokenizer

LIBRARY = {"__init__", "workloads"}  # modules of the package that are not benchmarks themselves
BENCHMARKS = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem not in LIBRARY)


def runs_as_a_script(source: str) -> bool:
    """The module ends in `if __name__ == "__main__":`, so `python -m` runs it."""
    return any(isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
               for node in ast.parse(source).body)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_runs_as_a_module_and_prints_its_usage(name, capsys):
    assert runs_as_a_script((REPO / "benchmarks" / f"{name}.py").read_text())
    module = importlib.import_module(f"tide.benchmarks.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    prog = {"engine": "tide bench", "control_plane": "tide bench --control-plane", "embed": "tide bench --embed"}.get(name)
    assert usage.startswith("usage: " + (prog or f"python -P -m tide.benchmarks.{name}"))


def test_workloads_repeat_with_their_seed_and_keep_their_sizes(smollm2_dir):
    tokenizer = load_tokenizer(smollm2_dir)
    chat = build_workload("chat", tokenizer, num_prompts=6, input_len=0, output_len=0, seed=0)
    assert chat.prompts == build_workload("chat", tokenizer, 6, 0, 0, seed=0).prompts
    assert chat.prompts != build_workload("chat", tokenizer, 6, 0, 0, seed=1).prompts
    assert not chat.ignore_eos and all(len(p) <= CHAT_MAX_TOKENS for p in chat.prompts)
    fixed = build_workload("fixed", tokenizer, num_prompts=3, input_len=17, output_len=5, seed=0)
    assert [len(p) for p in fixed.prompts] == [17] * 3 and (fixed.max_tokens, fixed.ignore_eos) == (5, True)
    assert not set(tokenizer.all_special_ids) & {t for p in fixed.prompts for t in p}
    assert fixed.prompts == random_token_prompts(tokenizer, 3, 17, random.Random(0))
    assert grounded_prompts(tokenizer, 2, seed=0) == grounded_prompts(tokenizer, 2, seed=0)


def test_the_quantization_memory_probe_runs_in_a_fresh_process(tiny_model_dir):
    configs = {"fp32": ("float32", "none"), "int8 (fp32 rest)": ("float32", "int8")}
    figures = memory_figures(str(tiny_model_dir("llama")), configs)
    assert figures["int8 (fp32 rest)"]["layers"] < figures["fp32"]["layers"] / 3
    assert all(0 < f["rss"] <= f["peak_rss"] for f in figures.values())


def test_the_embedding_memory_series_takes_the_first_sample_past_each_tenth_of_the_rows():
    samples = [Sample(float(s), done, 500.0 + s) for s, done in enumerate([0, 5, 10, 19, 31, 100])]
    marks = at_tenths(samples, total=100)
    assert [(percent, s.done) for percent, s in marks] == [(10, 10), (20, 31), (30, 31)] + [
        (p, 100) for p in range(40, 101, 10)]
    assert at_tenths(samples[:3], total=100) == [(10, samples[2])]  # a run cut short reports what it reached


def test_short_embedding_texts_are_query_length_and_stream_the_same_texts():
    short = embedding_texts(200, seed=3, mix=SHORT_EMBEDDING_MIX)
    assert all(3 <= len(t.split()) <= 16 for t in short)
    assert list(iter_embedding_texts(200, 3, SHORT_EMBEDDING_MIX)) == short != embedding_texts(200, seed=3)


def test_the_step_profile_accounts_for_a_run_of_a_tiny_model(tiny_model_dir, capsys):
    from tide.benchmarks.step_profile import main

    argv = ["--model", str(tiny_model_dir("llama")), "--dtype", "float32", "--workload", "fixed", "--num-prompts",
            "3", "--input-len", "8", "--output-len", "4", "--threads", "1", "--clock", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "linear qkv" in out and "decode" in out, out


def test_cpu_kernel_candidates_take_the_cache_copies_in_turn_across_candidates():
    from tide.benchmarks.kernels_cpu import rotating

    seen = []
    record = lambda q, k, v, tables, lens, scale: seen.append(k)
    copies = [(f"k{i}", f"v{i}") for i in range(3)]
    turn = itertools.count()
    first, second = (rotating(record, turn, None, copies, None, None, 1.0) for _ in range(2))
    for _ in range(2):
        first()
        second()
    assert seen == ["k0", "k1", "k2", "k0"]  # no call reuses the copy the call before it read, whoever made it


def test_cpu_prefill_benchmark_checks_every_candidate_against_float64(capsys):
    from tide.benchmarks.kernels_cpu import main
    from tide.kernels import native

    assert main(["--prefill", "40", "17", "--reps", "1", "--threads", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "threads=1" in line]
    names = {line.split()[2].rstrip(":") for line in lines}
    assert "sdpa_per_prompt" in names and (native.load() is None or "native" in names), lines
    for line in lines:
        dtype, err = line.split()[0], float(line.rsplit("max err ", 1)[1].rstrip(")"))
        assert err < (1e-5 if dtype == "float32" else 2e-2), line


def test_linear_benchmark_times_both_kernels_on_every_shape(capsys):
    import torch

    from tide.benchmarks.linears_cpu import SHAPES, main
    from tide.kernels import native, native_linear

    code = main(["--rows", "3", "--layers", "2", "--rounds", "1", "--threads", "1"])
    captured = capsys.readouterr()
    if not native_linear.serves(native.load(), torch.float32, 576):
        assert code == 1 and "does not run here" in captured.err
        return
    assert code == 0
    lines = [line for line in captured.out.splitlines() if "rows" in line]
    assert [line.split()[2] for line in lines] == ["native:", "onednn:"], lines
    for line in lines:
        assert all(f"{name} " in line for name in SHAPES), line
