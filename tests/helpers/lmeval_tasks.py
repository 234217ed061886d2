"""Local lm-eval tasks (no dataset hub here): task YAML files over JSONL documents, written into a directory that is
then lm-eval's `include_path`. One task of each request type: multiple choice (loglikelihood), short answers
(generate_until) and perplexity (loglikelihood_rolling)."""
from __future__ import annotations

import json
from pathlib import Path

QUESTIONS = [
    ("What is the capital of France?", ["Paris", "London", "Rome", "Berlin"], 0),
    ("Which animal barks?", ["a cat", "a dog", "a cow", "a fish"], 1),
    ("What color is the sky on a clear day?", ["green", "red", "blue", "yellow"], 2),
    ("How many legs does a spider have?", ["six", "four", "ten", "eight"], 3),
    ("What is two plus two?", ["four", "five", "three", "two"], 0),
    ("Which planet is known as the red planet?", ["Venus", "Mars", "Jupiter", "Saturn"], 1),
]
ANSWERS = [("What is the capital of France?", "Paris"), ("What is 2 + 2?", "4"), ("What color is grass?", "green"),
           ("Name the largest ocean.", "Pacific"), ("Who wrote Hamlet?", "Shakespeare")]
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3,
         "Paged attention keeps the key and value cache in fixed-size blocks, so memory is shared and reused.",
         "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen."]

MC = """task: tide_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
GEN = """task: tide_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: " {{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "Question:"]
  max_gen_toks: 10
  do_sample: false
metric_list:
  - metric: exact_match
"""
PPL = """task: tide_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""


def write_tasks(root: Path, questions=QUESTIONS, answers=ANSWERS) -> Path:
    """tide_mc, tide_gen and tide_ppl under `root`; returns it (the include_path)."""
    root.mkdir(parents=True, exist_ok=True)
    docs = {"mc": [{"question": q, "choices": c, "answer": a} for q, c, a in questions],
            "gen": [{"question": q, "answer": a} for q, a in answers],
            "ppl": [{"text": t} for t in TEXTS]}
    for name, rows in docs.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, template in (("mc", MC), ("gen", GEN), ("ppl", PPL)):
        (root / f"tide_{name}.yaml").write_text(template.format(data=root / f"{name}.jsonl"))
    return root
