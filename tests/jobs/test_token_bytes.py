"""Each token's bytes, as OpenAI's logprobs give them: joined, they are exactly the text's UTF-8, even where one
character spans several tokens."""
from __future__ import annotations

from tide.engine.loader import load_tokenizer
from tide.jobs.shards.outcome import token_text
from tide.workers.token_bytes import TokenBytes

TEXT = "Café au lait, naïve 🌊 — ok"


def test_byte_level_bpe_tokens_join_to_the_texts_bytes(smollm2_dir):
    tokenizer = load_tokenizer(smollm2_dir)
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    pieces = TokenBytes(tokenizer)(ids)
    assert b"".join(pieces) == TEXT.encode()
    partial = [p for p in pieces if not _whole_utf8(p)]
    assert partial and all("\\x" in token_text(p) for p in partial)  # the wave emoji is split across tokens
    assert TokenBytes(tokenizer)([tokenizer.eos_token_id]) == [tokenizer.eos_token.encode()]


class SentencePieceLike:
    """A SentencePiece vocabulary's spelling: `▁` for a space, `<0xNN>` for bytes without a piece."""

    pieces = {1: "▁caf", 2: "<0xC3>", 3: "<0xA9>", 4: "!"}

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


def test_sentencepiece_spaces_and_byte_pieces():
    assert TokenBytes(SentencePieceLike())([1, 2, 3, 4]) == [b" caf", b"\xc3", b"\xa9", b"!"]
    assert token_text(b"\xc3") == "\\xc3" and token_text(" café".encode()) == " café"


def _whole_utf8(piece: bytes) -> bool:
    try:
        piece.decode()
    except UnicodeDecodeError:
        return False
    return True
