"""Prompts the engine tests share: token-id prompts that exercise the prefix cache, and SmolLM2 chats."""
from __future__ import annotations

import random

CHATS = [
    "Hi!",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why each one is prime.",
    "Explain in two sentences what a paged KV cache is and why an inference engine would use one.",
    "Translate to French: The weather is lovely today, and we are going to walk along the river after lunch.",
    "You are a careful assistant. Summarize the following notes for a busy manager: the build broke twice this "
    "week because of a flaky network test; the team moved the test behind a retry; deployment is now green; the "
    "next release is planned for Thursday pending a security review of the new login flow.",
    "Give me a short recipe for pancakes. Include the ingredients with quantities, then the steps, numbered. "
    "Keep it under one hundred words, and mention one common mistake people make when flipping them, plus how "
    "to avoid it. Finally suggest two toppings that are not sweet.",
]


def make_prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(3, vocab) for _ in range(40)]
    prompts = [[rng.randrange(3, vocab) for _ in range(n)] for n in (1, 5, 16, 17, 33, 50)]
    prompts += [shared + [rng.randrange(3, vocab) for _ in range(k)] for k in (1, 9)]  # share a cached prefix
    prompts.append(list(shared))
    return prompts
