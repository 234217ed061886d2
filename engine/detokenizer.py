"""Incremental detokenization of a sequence's output, and the stop-string search that runs on it."""
from __future__ import annotations

# Tokens of context decoded before the new ones: enough for tokenizers that drop a word's leading space when it
# starts the decoded text (SentencePiece) to render the new tokens as they read in the middle of the text.
_CONTEXT_TOKENS = 5
_INCOMPLETE_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns one sequence's output tokens into text as they arrive, decoding only a short window per token.

    The window runs from `prefix_offset` (context already emitted) to the end; the text decoded for
    [prefix_offset, read_offset) is already emitted, what the window adds beyond it is new. Text ending in an
    incomplete UTF-8 character (decoded as U+FFFD) is held back until the character's last byte arrives, so the
    concatenation of the returned pieces equals decoding all output tokens at once, except that the first word keeps
    the space SentencePiece tokenizers drop at the start of a decode: the output reads as a continuation of the prompt.
    """

    def __init__(self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        # a prompt cut inside a character would swallow the output's first bytes into it: use no context then
        if self._decode(context).endswith(_INCOMPLETE_CHAR):
            context = []
        self._token_ids = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._text = ""

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=self._skip_special_tokens)

    def append(self, token_id: int) -> str:
        """Add one output token; return the text it completes ("" while a character or special token is pending)."""
        self._token_ids.append(token_id)
        emitted = self._decode(self._token_ids[self._prefix_offset:self._read_offset])
        window = self._decode(self._token_ids[self._prefix_offset:])
        if len(window) <= len(emitted) or window.endswith(_INCOMPLETE_CHAR):
            return ""
        new_text = window[len(emitted):]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._token_ids)
        self._text += new_text
        return new_text

    @property
    def text(self) -> str:
        """The output text decoded so far."""
        return self._text


def find_stop_string(text: str, num_new_chars: int, stop: list[str]) -> int | None:
    """Where to cut `text` (the stop string excluded) if a stop string ends within its last `num_new_chars`
    characters, else None. Earlier text was searched before, so only the window the new characters can complete
    is searched; with several matches, the earliest cut wins."""
    cuts = []
    for s in stop:
        at = text.find(s, max(0, len(text) - num_new_chars - len(s) + 1))
        if at != -1:
            cuts.append(at)
    return min(cuts, default=None)
