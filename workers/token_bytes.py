"""The bytes each token id stands for, from a Hugging Face tokenizer: what OpenAI's logprobs call a token's `bytes`.

Decoding one token alone loses bytes that end inside a UTF-8 character, so the token's vocabulary piece is read
instead: byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM2) spells every byte as one printable character, SentencePiece
spells bytes it has no piece for as `<0xNN>` and spaces as `▁`; anything else is decoded alone.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SPACE_MARK = "\u2581"  # SentencePiece's ▁


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's character for each byte, reversed: printable Latin-1 bytes stand for themselves, the other
    bytes take the code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    alphabet, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[chr(byte)] = byte
        else:
            alphabet[chr(256 + extra)] = byte
            extra += 1
    return alphabet


def _decoder_types(tokenizer) -> set[str]:
    """The types of the fast tokenizer's decoder and its parts (empty when it has none we can read)."""
    try:
        decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    except Exception:  # a slow or stand-in tokenizer
        return set()
    return {decoder.get("type")} | {part.get("type") for part in decoder.get("decoders") or []}


class TokenBytes:
    """`tokenizer`'s token ids -> bytes, each id worked out once."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.byte_level = "ByteLevel" in _decoder_types(tokenizer)
        self._cache: dict[int, bytes] = {}

    def __call__(self, token_ids: list[int]) -> list[bytes]:
        missing = [t for t in dict.fromkeys(token_ids) if t not in self._cache]
        if missing:
            pieces = self.tokenizer.convert_ids_to_tokens(missing)
            for token_id, piece in zip(missing, pieces):
                self._cache[token_id] = self._bytes(token_id, piece)
        return [self._cache[t] for t in token_ids]

    def _bytes(self, token_id: int, piece: str | None) -> bytes:
        if piece is None:
            return b""
        if self.byte_level:
            alphabet = _byte_level_alphabet()
            if all(ch in alphabet for ch in piece):
                return bytes(alphabet[ch] for ch in piece)
            return piece.encode()  # an added token spelt as itself
        byte = _BYTE_PIECE.match(piece)
        if byte:
            return bytes([int(byte.group(1), 16)])
        if _SPACE_MARK in piece:
            return piece.replace(_SPACE_MARK, " ").encode()
        return self.tokenizer.decode([token_id]).encode()
