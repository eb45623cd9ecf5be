"""Prompt-prefix reuse across the Scheduler's sequences.

Requests that start alike (the same system prompt for every batch row or server request, a
follow-up turn of a conversation) need not decode their common start again: its KV is in the
cache already, in the sequence of a request that is still running or of one that finished
(a finished sequence keeps its cells until its slot is needed). A new request gets the free
sequence whose own cells share the longest prefix with its prompt, or a copy of a busier
sequence's cells when that one shares clearly more (`MIN_COPY_TOKENS`), trimmed to the shared
prefix; it then decodes only its own tokens, and at least the last `EXACT_TAIL` of the prompt.
The KV of a position depends only on the tokens up to it, so the result is what decoding the
whole prompt gives; exactly, when the last prompt tokens go through the same kernels as in a
whole prompt's batch (see EXACT_TAIL).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from edgeds.llamacpp.binding import Context

# A copy between KV streams moves a whole stream (llama.cpp copies only whole ones): worth it
# when it saves decoding at least this many tokens; reusing a sequence's own cells costs nothing.
MIN_COPY_TOKENS = 64
# Prompt tokens decoded again however much is cached. llama.cpp's CPU kernels take another path
# for a batch under 64 rows: re-decoding only the last 1..63 tokens of a SmolLM2 Q4_1 prompt gave
# logits up to 0.9 off those of the whole prompt's batch (and flipped greedy replies), 64 or more
# gave the same bits. GPU backends switch kernels at smaller batches (CUDA at 8).
EXACT_TAIL = 64


def prompt_chunk(left: int, room: int) -> int:
    """Prompt tokens to decode this step, of `left`, in `room`: the last batch of a prompt keeps
    EXACT_TAIL tokens at least, so a prompt's last tokens (and its first reply token) come out
    the same however it was split or how much of it was cached."""
    take = min(left, room)
    if take < left < take + EXACT_TAIL:
        take = max(left - EXACT_TAIL, 0)
    return take


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common start of `a` and `b`, at most `limit` (slice compares run in C)."""
    hi = min(len(a), len(b), limit)
    if hi <= 0 or a[0] != b[0]:
        return 0
    if a[:hi] == b[:hi]:
        return hi
    lo = 1  # a[:lo] == b[:lo]; a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class PrefixCache:
    """Which prompt tokens each idle sequence's KV still holds, and the choice of a sequence
    (with its reusable prefix) for a new prompt."""

    def __init__(self, ctx: Context, *, min_copy: int = MIN_COPY_TOKENS):
        self.ctx = ctx
        self.min_copy = min_copy
        self._idle: dict[int, Sequence[int]] = {}  # free seq → the prompt tokens at its positions 0..

    def release(self, seq: int, tokens: Sequence[int]) -> None:
        """`seq` finished with the KV of `tokens` (its prompt, as far as it was decoded) kept."""
        self._idle[seq] = tokens

    def clear(self) -> None:
        """The KV cache was wiped."""
        self._idle.clear()

    def place(self, tokens: Sequence[int], free: list[int], running: Mapping[int, tuple[Sequence[int], int]],
              fresh: set[int]) -> tuple[int, int] | None:
        """Take a sequence from `free` for the prompt `tokens` and prepare its KV; returns
        (seq, prompt tokens already in its KV), or None when the prompt should wait a step:
        a running sequence is still decoding a prefix it shares (a batch's rows submitted
        together with one system prompt decode it once, not once per slot).

        `running`: busy sequences → (their prompt tokens, how many of them are decoded);
        `fresh`: sequences placed this step, whose KV a copy has yet to fill (no source yet)."""
        limit = len(tokens) - EXACT_TAIL  # ≤ 0: a short prompt is decoded whole
        # an idle sequence is free: the best of them is reused in place; a running one lends a copy
        own = {seq: common_prefix(self._idle[seq], tokens, limit) if seq in self._idle else 0 for seq in free}
        # ties go to the lowest id: a step's running ids in one run are one ubatch (see the Scheduler)
        seq = max(free, key=lambda s: (own[s], -s))
        best_src, best, later = None, own[seq], 0
        for src, (held, fed) in running.items():
            shared = common_prefix(held, tokens, limit)
            ready = 0 if src in fresh else min(shared, fed)
            if ready > best:
                best_src, best = src, ready
            if shared > ready:
                later = max(later, shared)
        if later - best >= self.min_copy:
            return None
        if best_src is not None and best - own[seq] >= self.min_copy:
            seq = min(free, key=lambda s: (own[s], s))  # the free sequence whose own cells are worth least
            self.ctx.copy_seq(best_src, seq)
            reused = best
        else:
            reused = own[seq]
        self.ctx.forget(seq, reused)
        self._idle.pop(seq, None)
        free.remove(seq)
        return seq, reused
