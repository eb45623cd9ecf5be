"""Speculative decoding: a cheap drafter guesses the next tokens, the model checks them all in
one batch and keeps what it would have sampled anyway.

The model decodes its pending token and the draft d_0..d_{n-1} in one llama_batch, with logits
for every row. Its own sampler chain then samples the rows in order, accepting each sample into
its state exactly as plain decoding would; it stops at the first row whose sample differs from
the draft. The samples are the output: the drafts that matched, then the model's own token at
the first mismatch (or the bonus token after a full accept). Each sample is drawn from the
same logits, by the same chain in the same state, as without a draft, so the output
distribution is the model's at any temperature (with a seed, the same tokens, up to float
differences between batch sizes); the draft only decides how many tokens one step yields. The
KV cells of the rejected drafts are removed from the model's context; the draft model's own KV
is trimmed to the accepted tokens when it drafts next.

Drafters: `DraftModel` (a second, smaller GGUF with the same vocabulary, run greedily in its
own llama.cpp context with one sequence per slot) and `NgramDrafter` (prompt lookup: what
followed the latest earlier occurrence of the last few tokens of prompt + output).

How many tokens to draft (`DraftState.length`) is chosen each step from measured costs
(`DecodeCosts`): a step with n drafts yields 1 + p + … + pⁿ tokens on average and costs a row
of its own plus n verify rows and n drafted tokens. Where verify rows cost most of a step (a
CPU whose batched kernels save nothing) or the drafter costs what the model does, that is none.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import llama_cpp
import numpy as np

from edgeds.errors import UsageError
from edgeds.llamacpp.binding import Context, Model

VOCAB_MAX_DIFFERENCE = 128  # llama.cpp's rule (common/speculative.cpp): padded vocabularies differ a little
TEXT_CHECKS = 4096  # token texts compared between the two vocabularies, spread over the shared ids
DRAFT_START, DRAFT_MAX = 4, 16  # draft length before the costs are known; the longest
PRIOR_ACCEPTANCE, PRIOR_WEIGHT = 0.5, 2.0  # before any draft was checked; worth two drafted tokens
ACCEPTANCE_FADE = 0.9  # per step: acceptance follows the text being written
PROBE_FIRST, PROBE_LAST = 16, 256  # plain steps before trying a draft again (doubling while it fails)
NGRAM_SIZES = (4, 3, 2)  # prompt lookup tries the longest tail first
# Request fields whose per-token handling reads the model's logits for the token just sampled:
# those requests decode plainly (a field named here that GenerationParams lacks is never set).
PLAIN_DECODING_FIELDS = ("logprobs", "top_logprobs")

# name → the vocabulary's id of that special token (-1: none); a draft must agree on each
SPECIAL_TOKENS: dict[str, Callable] = {
    "BOS": llama_cpp.llama_vocab_bos,
    "EOS": llama_cpp.llama_vocab_eos,
    "EOT": llama_cpp.llama_vocab_eot,
}


def incompatibility(target: Model, draft: Model) -> str | None:
    """Why `draft` cannot draft for `target` (llama.cpp's checks), or None when it can."""
    if abs(target.n_vocab - draft.n_vocab) > VOCAB_MAX_DIFFERENCE:
        return (f"its vocabulary has {draft.n_vocab} tokens and the model's {target.n_vocab} "
                f"(they may differ by at most {VOCAB_MAX_DIFFERENCE})")
    if llama_cpp.llama_vocab_type(target.vocab) != llama_cpp.llama_vocab_type(draft.vocab):
        return "its tokenizer is of another type"
    for name, token_of in SPECIAL_TOKENS.items():
        ours, theirs = token_of(draft.vocab), token_of(target.vocab)
        if ours != theirs:
            return f"its {name} token is {ours} where the model's is {theirs}"
    if target.add_bos != draft.add_bos:
        return "one of them adds BOS to the prompt and the other does not"
    shared = min(target.n_vocab, draft.n_vocab)
    for token in range(0, shared, max(1, shared // TEXT_CHECKS)):
        if target.token_text(token) != draft.token_text(token):
            return (f"token {token} is {draft.token_text(token)!r} in it and "
                    f"{target.token_text(token)!r} in the model")
    return None


def check_compatible(target: Model, draft: Model) -> None:
    """Raises UsageError (one line) when `draft` cannot draft for `target`."""
    why = incompatibility(target, draft)
    if why is not None:
        raise UsageError(f"--draft {draft.path.name} cannot draft for {target.path.name}: {why}")


# ---------------------------------------------------------------------------------------------
# Drafters: propose up to n tokens after a sequence's history (prompt + output so far)


class NgramDrafter:
    """Prompt lookup: the tokens that followed the latest earlier occurrence of the history's last
    k tokens (k from NGRAM_SIZES, longest first). No model; it shines where the output copies
    its input (summaries, edits, code)."""

    name = "ngram"
    probes = True  # a try after plain steps costs nothing but its verify rows

    def propose_many(self, requests: Sequence[tuple[int, Sequence[int], int]]) -> list[list[int]]:
        return [self.propose(history, n) for _, history, n in requests]

    @staticmethod
    def propose(history: Sequence[int], n: int) -> list[int]:
        if n <= 0:
            return []
        tokens = np.asarray(history, dtype=np.int64)
        size = len(tokens)
        for k in NGRAM_SIZES:
            if size <= k:
                continue
            # starts i < size - k where tokens[i:i+k] equals the last k tokens
            hits = np.ones(size - k, dtype=bool)
            for j in range(k):
                hits &= tokens[j:size - k + j] == tokens[size - k + j]
            found = np.flatnonzero(hits)
            if len(found):
                start = int(found[-1]) + k
                return [int(t) for t in tokens[start:start + n]]
        return []

    def for_slots(self, n_seq: int, seq_ctx: int, n_threads: int | None) -> "NgramDrafter":
        return self

    def close(self) -> None:
        pass


class DraftModel:
    """A smaller model with the same vocabulary, decoded greedily in its own context (one sequence
    per slot). Its KV follows each sequence's history: before drafting it keeps the longest
    prefix it already holds and decodes the rest, so rejected drafts are dropped there too."""

    probes = False  # a try after plain steps first decodes every token it missed

    def __init__(self, model: Model, *, target_vocab: int, seq_ctx: int, n_seq: int = 1,
                 n_threads: int | None = None, owns_model: bool = True):
        self.model = model
        self.name = model.path.name
        self.target_vocab = target_vocab
        self.seq_ctx = seq_ctx
        self.ctx = Context(model, n_ctx=seq_ctx * n_seq, n_seq_max=n_seq, n_threads=n_threads, kv_unified=False)
        self.owns_model = owns_model
        self._cached: dict[int, list[int]] = {}  # per sequence: tokens whose KV is in self.ctx
        self.decoded = 0  # rows the last propose_many decoded (catching up on histories included)
        self._limit = min(model.n_vocab, target_vocab)  # never propose an id the model lacks

    def for_slots(self, n_seq: int, seq_ctx: int, n_threads: int | None) -> "DraftModel":
        """Another context on the same weights, for a scheduler's slots."""
        return DraftModel(self.model, target_vocab=self.target_vocab, seq_ctx=seq_ctx, n_seq=n_seq,
                          n_threads=n_threads, owns_model=False)

    def propose_many(self, requests: Sequence[tuple[int, Sequence[int], int]]) -> list[list[int]]:
        """Greedy drafts for (seq, history, n) requests, decoded together one step at a time
        (the first step also decodes what each sequence's KV lacks of its history)."""
        drafts: list[list[int]] = [[] for _ in requests]
        self.decoded = 0
        wanted: dict[int, int] = {}  # request index → tokens to draft
        # (request index, tokens to decode first without logits, token, pos): a row of the next step
        pending: list[tuple[int, list[int], int, int]] = []
        share = max(1, self.ctx.n_batch // max(1, len(requests)))
        for i, (seq, history, n) in enumerate(requests):
            n = min(n, self.seq_ctx - len(history) - 1)
            if n <= 0 or not history:
                continue
            history = self._own_ids(history)
            lead = history[self._keep_common(seq, history):len(history) - 1]
            if len(lead) >= share:  # a long catch-up (a new prompt): on its own, in chunks
                self._decode_lead(seq, lead, len(history) - 1 - len(lead))
                lead = []
            wanted[i] = n
            pending.append((i, lead, history[-1], len(history) - 1))
        while pending:
            items: list[tuple[int, int, int, bool]] = []
            rows = []
            for i, lead, token, pos in pending:
                seq = requests[i][0]
                items += [(t, pos - len(lead) + j, seq, False) for j, t in enumerate(lead)]
                rows.append(len(items))
                items.append((token, pos, seq, True))
            self.ctx.decode(items)
            self.decoded += len(items)
            following = []
            for row, (i, lead, token, pos) in zip(rows, pending):
                self._cached[requests[i][0]] += lead + [token]
                logits = np.ctypeslib.as_array(self.ctx.logits(row), shape=(self._limit,))
                drafts[i].append(int(logits.argmax()))
                if len(drafts[i]) < wanted[i]:
                    following.append((i, [], drafts[i][-1], pos + 1))
            pending = following
        return drafts

    def _own_ids(self, history: Sequence[int]) -> list[int]:
        """`history` with ids past the draft's vocabulary (a larger padded one's) as its EOS:
        the draft cannot decode them, and what it reads only changes its guesses."""
        tokens = np.asarray(history, dtype=np.int64)
        outside = tokens >= self.model.n_vocab
        if outside.any():
            tokens[outside] = max(self.model.eos_id, 0)
        return tokens.tolist()

    def _keep_common(self, seq: int, history: Sequence[int]) -> int:
        """Drop the sequence's KV past its longest prefix shared with `history` (but its last
        token, which is decoded again for its logits); returns that prefix's length."""
        cached = self._cached.setdefault(seq, [])
        m = min(len(cached), len(history) - 1)
        differs = np.flatnonzero(np.asarray(cached[:m]) != np.asarray(history[:m]))
        common = int(differs[0]) if len(differs) else m
        self.ctx.forget(seq, common)
        del cached[common:]
        return common

    def _decode_lead(self, seq: int, tokens: Sequence[int], start: int) -> None:
        for lo in range(0, len(tokens), self.ctx.n_batch):
            chunk = list(tokens[lo:lo + self.ctx.n_batch])
            self.ctx.decode([(t, start + lo + j, seq, False) for j, t in enumerate(chunk)])
            self.decoded += len(chunk)
            self._cached[seq] += chunk

    def close(self) -> None:
        self.ctx.close()
        if self.owns_model:
            self.model.close()


# ---------------------------------------------------------------------------------------------
# The draft length: what a step is likely to yield for what it costs on this machine


@dataclass
class DecodeCosts:
    """What decoding and drafting cost here, learnt as generations run (older figures fade).

    A decode of r rows takes about `first + r * per_row` seconds: fitted by least squares over
    recent decodes. Whether a verify row is nearly free (a GPU, a CPU whose batched kernels
    reuse each weight they load) or costs most of a step (a CPU without them) decides whether
    drafting pays, so it is measured, not assumed."""

    fade: float = 0.98  # each new decode counts 1, the one before 0.98, ...
    draft_token: float = 0.0  # seconds a drafter takes per drafted token
    _sums: list[float] = field(default_factory=lambda: [0.0] * 5)  # weight, Σr, Σt, Σr², Σrt
    _per_row: float | None = None

    def observe_decode(self, rows: int, seconds: float) -> None:
        w = self._sums
        for i, value in enumerate((1.0, rows, seconds, rows * rows, rows * seconds)):
            w[i] = w[i] * self.fade + value

    def observe_draft(self, tokens: int, seconds: float) -> None:
        if tokens:
            per_token = seconds / tokens
            self.draft_token = per_token if not self.draft_token else 0.7 * self.draft_token + 0.3 * per_token

    def fit(self) -> tuple[float, float] | None:
        """(first, per_row) seconds, or None until decodes of different sizes were seen."""
        n, r, t, rr, rt = self._sums
        spread = n * rr - r * r  # n² × the variance of the row counts
        if n >= 2 and spread >= 0.1 * n * n:
            self._per_row = max(0.0, (n * rt - r * t) / spread)
        elif self._per_row is None:
            return None
        # (nearly) all recent decodes of one size: the cost of a row is the last one fitted
        return max(0.0, (t - self._per_row * r) / n), self._per_row


def best_length(acceptance: float, own_row: float, extra_row: float, longest: int = DRAFT_MAX) -> int:
    """The draft length n (0: none) with the most tokens expected per second: a step yields
    1 + p + p² + … + pⁿ tokens on average (p: how often a drafted token is accepted) and costs
    `own_row` plus `extra_row` per drafted token."""
    best, best_rate = 0, 1.0 / own_row if own_row > 0 else math.inf
    expected, term = 1.0, 1.0
    for n in range(1, longest + 1):
        term *= acceptance
        expected += term
        rate = expected / (own_row + n * extra_row)
        if rate > best_rate:
            best, best_rate = n, rate
    return best


@dataclass
class DraftState:
    """One generation's speculation: how often its drafts are accepted (recent steps count
    more), its counts, and when to try drafting again after a run of plain steps."""

    fixed: int | None = None  # --draft-max: always this many
    probes: bool = True  # whether to try a draft again after plain steps
    prior: float = PRIOR_ACCEPTANCE  # the acceptance expected before this generation's first draft
    drafted: int = 0
    accepted: int = 0
    _hits: float = 0.0  # faded: drafted tokens accepted
    _tries: float = 0.0  # faded: drafted tokens up to and including each step's first miss
    _plain: int = 0  # plain steps since the last draft
    _probe_after: int = PROBE_FIRST
    _unfit_steps: int = 0

    def __post_init__(self) -> None:
        self._hits, self._tries = PRIOR_WEIGHT * self.prior, PRIOR_WEIGHT

    @property
    def acceptance(self) -> float:
        return self._hits / self._tries

    def length(self, costs: DecodeCosts, rows_sharing: int = 1) -> int:
        """How many tokens to draft for the next step. `rows_sharing`: the pending rows of all
        sequences in that step, which share its fixed cost."""
        if self.fixed:
            return self.fixed
        fit = costs.fit()
        if fit is None:  # draft every other step, so that decodes of two sizes get measured
            self._unfit_steps += 1
            return DRAFT_START if self._unfit_steps % 2 else 0
        first, per_row = fit
        own_row, extra_row = first / rows_sharing + per_row, per_row + costs.draft_token
        n = best_length(self.acceptance, own_row, extra_row)
        if n:
            self._plain, self._probe_after = 0, PROBE_FIRST
            return n
        if not self.probes or not best_length(1.0, own_row, extra_row):
            return 0  # drafting cannot pay here even if every drafted token were accepted
        self._plain += 1
        if self._plain < self._probe_after:
            return 0
        # drafts may have grown better (the answer started copying its input): try one
        self._plain, self._probe_after = 0, min(2 * self._probe_after, PROBE_LAST)
        return 1

    def record(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted
        if drafted:
            self._hits = self._hits * ACCEPTANCE_FADE + accepted
            self._tries = self._tries * ACCEPTANCE_FADE + accepted + (accepted < drafted)


@dataclass
class Speculation:
    """A drafter, the draft-length setting and what decoding costs; an Engine's (or a
    Scheduler's, one sequence per slot). `drafted`/`accepted` count over its lifetime (the chat
    header's acceptance rate)."""

    drafter: DraftModel | NgramDrafter
    draft_max: int | None = None  # fixed draft length; None: chosen each step from the costs
    drafted: int = field(default=0)
    accepted: int = field(default=0)
    costs: DecodeCosts = field(default_factory=DecodeCosts)
    _tries: int = 0  # drafted tokens up to and including each step's first miss, over its lifetime

    @property
    def name(self) -> str:
        return self.drafter.name

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @staticmethod
    def applies(params) -> bool:
        """Whether a request may decode speculatively (see PLAIN_DECODING_FIELDS)."""
        return not any(getattr(params, name, None) for name in PLAIN_DECODING_FIELDS)

    def start(self) -> DraftState:
        """A generation's state, expecting the acceptance its earlier generations had (drawn
        toward PRIOR_ACCEPTANCE while they drafted little)."""
        prior = (self.accepted + PRIOR_WEIGHT * PRIOR_ACCEPTANCE) / (self._tries + PRIOR_WEIGHT)
        return DraftState(fixed=self.draft_max, probes=self.drafter.probes, prior=prior)

    def propose(self, requests: Sequence[tuple[int, Sequence[int], int]]) -> list[list[int]]:
        """The drafter's proposals for (seq, history, n) requests, timed."""
        started = time.perf_counter()
        drafts = self.drafter.propose_many(requests)
        seconds, drafted = time.perf_counter() - started, sum(map(len, drafts))
        # Drafting steadily, a draft model decodes about one row per drafted token; a call that
        # first caught up on a long history (a new prompt) ran one large batch, which says
        # little of what a drafted token costs.
        if drafted <= getattr(self.drafter, "decoded", drafted) <= 2 * drafted:
            self.costs.observe_draft(drafted, seconds)
        return drafts

    def record(self, state: DraftState, drafted: int, accepted: int) -> None:
        state.record(drafted, accepted)
        self.drafted += drafted
        self.accepted += accepted
        self._tries += accepted + (accepted < drafted)

    def for_slots(self, n_seq: int, seq_ctx: int, n_threads: int | None = None) -> "Speculation":
        return Speculation(self.drafter.for_slots(n_seq, seq_ctx, n_threads), self.draft_max)

    def close(self) -> None:
        self.drafter.close()


def verify(draw: Callable[[Context, int], int], ctx: Context, rows: Sequence[int], draft: Sequence[int]) -> list[int]:
    """Sample `rows` (the pending token's row, then one per drafted token) in order with `draw`
    (a sampler chain's, or a runtime.sequence.Sequence's) until a sample differs from the draft:
    the matching drafts, then the model's own token there (or the bonus token after the last
    draft)."""
    out: list[int] = []
    for i, row in enumerate(rows):
        token = draw(ctx, row)
        out.append(token)
        if i >= len(draft) or token != draft[i]:
            break
    return out


def speculate(spec: Speculation, state: DraftState, ctx: Context, draw: Callable[[Context, int], int],
              history: list[int], pos: int, room: int, seq: int = 0) -> list[int]:
    """One step of one sequence: decode its pending token history[-1] at `pos` with up to `room`
    drafted tokens after it (none where drafting does not pay), sample, and drop the KV of the
    rejected drafts. Returns the samples (see `verify`); all but the last are in the KV cache,
    the last is the new pending token."""
    n = min(state.length(spec.costs), room, ctx.n_batch - 1)
    draft = spec.propose([(seq, history, n)])[0] if n > 0 else []
    started = time.perf_counter()
    ctx.decode([(history[-1], pos, seq, True)] + [(t, pos + 1 + i, seq, True) for i, t in enumerate(draft)])
    spec.costs.observe_decode(1 + len(draft), time.perf_counter() - started)
    out = verify(draw, ctx, range(len(draft) + 1), draft)
    ctx.forget(seq, pos + len(out))
    spec.record(state, len(draft), len(out) - 1)
    return out
