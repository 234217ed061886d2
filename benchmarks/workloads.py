"""Prompt and workload generators shared by the benchmarks (and `tide tune`): seeded, so two runs see the same ids.

- `fixed`: random token ids of one length, a fixed number of new tokens with EOS ignored (the peers' workload);
- `chat`: an instruction through the chat template, padded with filler notes to 20-400 tokens;
- `grounded`: chat prompts whose answer mostly copies the notes they carry (where prompt lookup pays);
- `embedding_texts`: texts to embed in a search index's length mix, from short queries to passages past the limit.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

CHAT_MIN_TOKENS, CHAT_MAX_TOKENS, CHAT_NEW_TOKENS = 20, 400, 128

INSTRUCTIONS = [
    "Summarize the notes below in three short bullet points about {topic}.",
    "Explain {topic} to a new team member, using the notes below where they help.",
    "Write a short, friendly email to a colleague about {topic}, based on these notes.",
    "List the main risks of {topic} mentioned in the notes and suggest one fix for each.",
    "Answer in one paragraph: what should a beginner know about {topic}? Use the notes below.",
    "Turn the following notes on {topic} into a numbered checklist.",
    "Rewrite these notes on {topic} as a clear, plain-language paragraph.",
    "Give two arguments for and two against {topic}, drawing on the notes below.",
]
TOPICS = ["moving a service to the cloud", "a weekly team meeting", "learning to cook", "training for a 10k run",
           "planting a vegetable garden", "reducing energy use at home", "onboarding new engineers",
           "planning a trip to the mountains", "writing unit tests", "saving money each month"]
FILLER = [
    "The first draft was finished on Monday and shared with everyone for comments.",
    "Several people asked whether the schedule could slip by a week without trouble.",
    "Costs were slightly higher than expected because prices went up in spring.",
    "Most of the feedback was positive, although the second part felt rushed.",
    "We agreed to keep the scope small and revisit the larger ideas next quarter.",
    "One open question is who will own the follow-up work once the project ends.",
    "The tools we picked are easy to learn but have a few rough edges.",
    "A short survey showed that people prefer clear written steps to long meetings.",
    "Weather and travel made it hard to meet in person during the winter months.",
    "The budget allows for one extra person for about three months.",
    "Earlier attempts failed mainly because nobody measured progress along the way.",
    "Some steps can run in parallel, which should save a few days overall.",
    "Documentation is thin, so new people spend their first week asking questions.",
    "The pilot group reported fewer problems after the second round of changes.",
    "There is a risk that the main supplier will be late with the next delivery.",
    "Everyone agreed that simple, repeatable habits matter more than big plans.",
]


@dataclass
class Workload:
    """A fixed list of prompts (token ids) and how much to generate for each."""

    name: str
    prompts: list[list[int]]
    max_tokens: int
    ignore_eos: bool

    def describe(self) -> str:
        lens = [len(p) for p in self.prompts]
        stop = "exactly, ignoring EOS" if self.ignore_eos else "at most, stopping at EOS"
        mean = sum(lens) / len(lens)
        return (f"{self.name}: {len(lens)} prompts of {min(lens)}-{max(lens)} tokens (mean {mean:.0f}), "
                f"{self.max_tokens} new tokens {stop}, greedy")



def build_workload(name: str, tokenizer, num_prompts: int, input_len: int, output_len: int, seed: int) -> Workload:
    """`fixed`: random token ids, exactly `output_len` new tokens; `chat`: templated instructions stopping at EOS."""
    rng = random.Random(seed)
    if name == "fixed":
        return Workload("fixed", random_token_prompts(tokenizer, num_prompts, input_len, rng), output_len,
                        ignore_eos=True)
    prompts = [chat_prompt(tokenizer, rng) for _ in range(num_prompts)]
    return Workload("chat", prompts, CHAT_NEW_TOKENS, ignore_eos=False)


def random_token_prompts(tokenizer, count: int, length: int, rng: random.Random) -> list[list[int]]:
    """Prompts of exactly `length` token ids drawn from the vocabulary without its special tokens."""
    special = set(tokenizer.all_special_ids)
    vocab = [t for t in range(len(tokenizer)) if t not in special]
    return [[rng.choice(vocab) for _ in range(length)] for _ in range(count)]


def chat_prompt(tokenizer, rng: random.Random) -> list[int]:
    """One instruction through the chat template, padded with filler notes up to a random target length."""
    target = rng.randint(CHAT_MIN_TOKENS, CHAT_MAX_TOKENS)
    instruction = rng.choice(INSTRUCTIONS).format(topic=rng.choice(TOPICS))
    notes: list[str] = []
    ids = templated(tokenizer, instruction)
    while len(ids) < target:
        notes.append(rng.choice(FILLER))
        longer = templated(tokenizer, instruction + "\n\nNotes: " + " ".join(notes))
        if len(longer) > CHAT_MAX_TOKENS:
            break
        ids = longer
    return ids


def templated(tokenizer, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


GROUNDED_TASKS = [
    "Copy the notes below as a bulleted list, one sentence per bullet, keeping their wording.",
    "Quote, word for word, the sentences of the notes below that mention people or time.",
    "Extract the problems and risks from the notes below, quoting each one exactly.",
    "Summarize the notes below about {topic}, reusing their own words where you can.",
    "Rewrite the notes below about {topic} as a numbered list of their sentences.",
]


def grounded_prompts(tokenizer, num_prompts: int, seed: int) -> list[list[int]]:
    """Chat prompts whose answer is mostly copied from the notes they carry (5 to 8 sentences each)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(num_prompts):
        notes = rng.sample(FILLER, rng.randint(5, 8))
        task = rng.choice(GROUNDED_TASKS).format(topic=rng.choice(TOPICS))
        prompts.append(templated(tokenizer, task + "\n\nNotes:\n" + "\n".join(notes)))
    return prompts


# (share, fewest words, most words): queries, sentences, passage chunks, and long documents past a 256-token limit.
EMBEDDING_MIX = ((0.30, 3, 16), (0.40, 16, 60), (0.25, 60, 180), (0.05, 200, 500))
SHORT_EMBEDDING_MIX = ((1.0, 3, 16),)  # the mix's query-length share alone (search queries, titles)


def embedding_texts(count: int, seed: int, mix: tuple[tuple[float, int, int], ...] = EMBEDDING_MIX) -> list[str]:
    """`count` texts in a `mix` of lengths (share, fewest words, most words), cut from runs of the filler
    sentences."""
    return list(iter_embedding_texts(count, seed, mix))


def iter_embedding_texts(count: int, seed: int,
                         mix: tuple[tuple[float, int, int], ...] = EMBEDDING_MIX) -> Iterator[str]:
    """The texts of `embedding_texts`, one at a time (a million need not sit in memory at once)."""
    rng = random.Random(seed)
    shares = [share for share, _, _ in mix]
    for _ in range(count):
        _, low, high = rng.choices(mix, weights=shares)[0]
        words: list[str] = []
        target = rng.randint(low, high)
        while len(words) < target:
            words += rng.choice(FILLER).split()
        yield " ".join(words[:target])
