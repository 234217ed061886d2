"""lm-eval multiple choice: Tide's backend against lm-eval's Hugging Face backend, side by side, same weights and CPU.

`python -P -m tide.benchmarks.lmeval` writes a seeded 4-way multiple-choice task (1,000 questions by default, each
after the same three worked examples, as MMLU's few-shot examples are shared within a subject; answers of a few
tokens each) as local lm-eval task files, then runs lm-eval's command line on it with `--model tide` (`tide
lm-eval`, in process) and with `--model hf`, one after the other, each in a process of its own. Each side also runs
once on a single question: that run's time (loading the model, indexing lm-eval's tasks) is subtracted, so the
figures compare evaluation alone. It prints questions/s of both, the speed-up, and how far the two agree: the
choice per question and the largest loglikelihood difference. Tide computes the shared examples once and each
question once (prefix cache), then a short tail per choice; the HF backend computes every choice's whole context.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAMES = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Greta", "Hugo", "Ines", "Jon", "Kemal", "Lena"]
ITEMS = ["apple", "book", "candle", "drum", "envelope", "feather", "guitar", "hat", "ink bottle", "jar"]
PLACES = ["market", "library", "harbour", "bakery", "station", "museum", "garden", "workshop"]
PREAMBLE = ("The following are questions about short stories, each with four possible answers.\n\n"
            "Story: Mira walked to the river with three baskets and came back with two.\nQuestion: How many baskets "
            "did Mira lose?\nAnswer: one basket\n\n"
            "Story: The baker sold twelve loaves before noon and eight after.\nQuestion: How many loaves did the "
            "baker sell?\nAnswer: twenty loaves\n\n"
            "Story: Tom read four chapters on Monday and twice as many on Tuesday.\nQuestion: How many chapters did "
            "Tom read on Tuesday?\nAnswer: eight chapters\n\n")
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
TASK = """task: tide_bench_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
description: {preamble}
doc_to_text: "Story: {{{{story}}}}\\nQuestion: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.lmeval", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="alias, HF directory or GGUF file")
    p.add_argument("--questions", type=int, default=1000)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="both backends")
    p.add_argument("--hf-batch-size", default="1", help="lm-eval's HF batch size (its default is 1; or auto)")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="Tide's token budget per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["tide", "hf"], default=None, help="run one side only")
    return p


def questions(n: int, seed: int) -> list[dict]:
    """Seeded stories, each with a count question and four answers of a few tokens (the right one at random)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        name, item, place = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(PLACES)
        bought, lost = rng.randrange(4, 12), rng.randrange(1, 4)
        story = (f"{name} went to the {place} and bought {NUMBERS[bought - 1]} {item}s. On the way home "
                 f"{name} dropped {NUMBERS[lost - 1]} of them.")
        right = bought - lost
        wrong = rng.sample([k for k in range(1, 13) if k != right], 3)
        choices = [f"{NUMBERS[k - 1]} {item}s" for k in [right, *wrong]]
        rng.shuffle(choices)
        docs.append({"id": i, "story": story, "question": f"How many {item}s did {name} bring home?",
                     "choices": choices, "answer": choices.index(f"{NUMBERS[right - 1]} {item}s")})
    return docs


def write_task(root: Path, docs: list[dict]) -> Path:
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "tide_bench_mc.yaml").write_text(TASK.format(data=root / "docs.jsonl", preamble=json.dumps(PREAMBLE)))
    return root


def run_side(args, side: str, include: Path, out: Path, limit: int | None) -> float:
    """Seconds one lm-eval process takes for the task (or its first `limit` questions); raises on failure."""
    from tide.engine.loader import resolve_model
    from tide.workers.processes import tide_command

    common = ["--tasks", "tide_bench_mc", "--include_path", str(include), "--device", "cpu", "--log_samples",
              "--output_path", str(out), *(["--limit", str(limit)] if limit else [])]
    if side == "tide":
        model_args = (f"model={args.model},dtype={args.dtype},local=True,"
                      f"max_num_batched_tokens={args.max_num_batched_tokens}")
        command = tide_command("lm-eval", "--model", "tide", "--model_args", model_args, *common)
    else:
        model_args = f"pretrained={resolve_model(args.model)},dtype={args.dtype}"
        command = [sys.executable, "-P", "-m", "lm_eval", "--model", "hf", "--model_args", model_args,
                   "--batch_size", args.hf_batch_size, *common]
    env = {k: v for k, v in os.environ.items() if k not in ("TIDE_REDIS_URL", "TIDE_API_URL")}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=include, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} run failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def samples(out: Path) -> tuple[float, list[list[float]]]:
    """(accuracy, each question's choice loglikelihoods) from a run's lm-eval files."""
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    lines = next(out.rglob("samples_tide_bench_mc_*.jsonl")).read_text().splitlines()
    per_question = [[float(lp) for lp, _ in json.loads(line)["filtered_resps"]] for line in lines]
    return results["results"]["tide_bench_mc"]["acc,none"], per_question


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="tide-bench-lmeval-") as tmp:
        include = write_task(Path(tmp), questions(args.questions, args.seed))
        print(f"bench_lmeval: {args.model} {args.dtype}, {args.questions} questions x 4 choices, HF batch size "
              f"{args.hf_batch_size}, Tide token budget {args.max_num_batched_tokens}")
        sides = {}
        for side in ("tide", "hf"):
            if args.only in (None, side):
                startup = run_side(args, side, include, Path(tmp) / f"{side}-startup", limit=1)
                total = run_side(args, side, include, Path(tmp) / side, limit=None)
                acc, per_question = samples(Path(tmp) / side)
                seconds = max(total - startup, 1e-9)
                sides[side] = (seconds, per_question)
                print(f"  {side:4s} {seconds:8.1f} s evaluating ({total:.1f} s run, {startup:.1f} s start-up)  "
                      f"{args.questions / seconds:7.2f} questions/s  acc {acc:.3f}")
    if len(sides) == 2:
        (tide_s, ours), (hf_s, theirs) = sides["tide"], sides["hf"]
        same = sum(a.index(max(a)) == b.index(max(b)) for a, b in zip(ours, theirs))
        drift = max(abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a, b))
        print(f"  speed-up {hf_s / tide_s:.2f}x (goal >= 3x); same choice on {same}/{len(ours)} questions, "
              f"largest loglikelihood difference {drift:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
