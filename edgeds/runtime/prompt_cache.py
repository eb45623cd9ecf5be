"""Tokenizing a chat prompt only from where it differs from a prompt tokenized before.

Requests render to texts that start alike: the same system prompt, the conversation so far.
With parse_special, llama.cpp cuts a text at every special token (`<|im_end|>`, `<｜User｜>`)
and tokenizes the pieces apart, so the tokens of a text up to the end of a special token do not
depend on what follows it. `PromptTokenizer` keeps the last few texts it tokenized with their
tokens and where such cuts fall; a new text takes the tokens of the longest start it shares
with one of them, up to a cut, and tokenizes only the rest.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass

from edgeds.llamacpp.binding import Model
from edgeds.runtime.prefix_cache import common_prefix

KEEP = 8  # texts remembered


@dataclass(frozen=True)
class _Tokenized:
    text: str
    tokens: tuple[int, ...]
    cut_chars: tuple[int, ...]  # text offsets just after a special token …
    cut_tokens: tuple[int, ...]  # … and the number of tokens up to there


class PromptTokenizer:
    """`model.tokenize(text, add_special=False, parse_special=True)`, reusing the tokens of
    earlier texts' shared starts. Thread-safe (serve renders prompts on many threads)."""

    def __init__(self, model: Model, keep: int = KEEP):
        self.model = model
        self._seen: deque[_Tokenized] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def __call__(self, text: str) -> list[int]:
        with self._lock:
            seen = list(self._seen)
        base: _Tokenized | None = None
        chars = cut = 0
        for entry in seen:
            i = bisect_right(entry.cut_chars, common_prefix(entry.text, text, len(text))) - 1
            if i >= 0 and entry.cut_chars[i] > chars:
                base, chars, cut = entry, entry.cut_chars[i], i
        try:
            rest = self.model.tokenize(text[chars:], add_special=False, parse_special=True) if chars < len(text) else []
        except UnicodeEncodeError as err:  # where it is in the whole text
            raise UnicodeEncodeError(err.encoding, text, err.start + chars, err.end + chars, err.reason) from None
        if base is None:
            tokens, cut_chars, cut_tokens = rest, [], []
        else:
            n = base.cut_tokens[cut]
            tokens = list(base.tokens[:n]) + rest
            cut_chars, cut_tokens = list(base.cut_chars[:cut + 1]), list(base.cut_tokens[:cut + 1])
        self._find_cuts(text, tokens, len(tokens) - len(rest), chars, cut_chars, cut_tokens)
        with self._lock:
            self._seen.append(_Tokenized(text, tuple(tokens), tuple(cut_chars), tuple(cut_tokens)))
        return tokens

    def _find_cuts(self, text: str, tokens: list[int], start: int, pos: int, cut_chars: list[int],
                   cut_tokens: list[int]) -> None:
        """Append the cuts after the special tokens of tokens[start:], which cover text[pos:]."""
        for i in range(start, len(tokens)):
            token = tokens[i]
            if not self.model.splits_text(token):
                continue
            piece = self.model.token_piece(token, special=True).decode("utf-8", errors="replace")
            found = text.find(piece, pos) if piece else -1
            if found < 0:  # not where the text says: stop cutting (the rest is tokenized whole next time)
                return
            pos = found + len(piece)
            cut_chars.append(pos)
            cut_tokens.append(i + 1)
