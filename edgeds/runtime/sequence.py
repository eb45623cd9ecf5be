"""TokenSequence: one generation's tokens between llama.cpp's sampler and the events.

The Engine and the Scheduler draw and push every token through one of these; it owns what a
request asks of each token besides its text:
- the grammar constrains the ANSWER: where the prompt opened a think block, the grammar
  sampler joins when the block closes (`</think>`) and is fed the answer tokens only, so an R1
  model still thinks first; otherwise it applies from the first token. A grammar that spells
  out `</think>` itself was written for the whole reply, think block included, and applies
  from the first token too (how the tests make a tiny random model reason in a given shape);
- `reasoning_budget`: after that many reasoning tokens the engine itself appends the tokens of
  "\\n</think>\\n\\n" (decoded like sampled tokens, shown as the end of the reasoning) and the
  model goes on with the answer; 0 closes the block at once;
- `stop` strings end the generation; they match in the ANSWER only (an R1 model's reasoning
  does not stop it), across token boundaries (text that could begin a stop string is held
  back until the next tokens show it does not), and are never shown; text the phase split holds
  back as undecided (a reasoning template without the think prefix) is watched for them too;
- `logprobs`: each token's log-softmax over the raw logits of the row it was drawn from
  (the model's distribution before penalties, bias, grammar and temperature, as OpenAI
  reports it), attached to the text event that shows the token. At temperature 0 without
  penalties or bias the top alternative is the drawn token.
"""

from __future__ import annotations

from dataclasses import replace
import numpy as np

from edgeds.events import Answer, Event, Reasoning, TokenLogprob
from edgeds.llamacpp.binding import Context, Model, Sampler, SamplingParams
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.request import RequestError

CLOSE_TAG = "</think>"
CLOSE_THINK = "\n</think>\n\n"  # what the engine appends when the reasoning budget is spent


class StopMatcher:
    """Answer text → the text before the first stop string; holds back what could begin one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that is safe to show now (all of it, once a stop string matched, is cut)."""
        if self.stopped:
            return ""
        self.held += text
        hits = [at for at in (self.held.find(stop) for stop in self.stops) if at >= 0]
        if hits:
            self.stopped = True
            out, self.held = self.held[:min(hits)], ""
            return out
        keep = max((_partial_suffix(self.held, stop) for stop in self.stops), default=0)
        out = self.held[:len(self.held) - keep]
        self.held = self.held[len(out):]
        return out

    def finish(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out


def _partial_suffix(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def token_logprob(model: Model, logits: np.ndarray, token: int, top_n: int) -> TokenLogprob:
    """`token`'s log-probability under `logits` (log-softmax), with the `top_n` likeliest tokens."""
    peak = float(logits.max())
    log_z = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
    top: tuple[TokenLogprob, ...] = ()
    if top_n:
        best = np.argpartition(-logits, top_n - 1)[:top_n]
        best = best[np.lexsort((best, -logits[best]))]  # likeliest first; on a tie the lower id, as greedy
        top = tuple(_entry(model, int(t), float(logits[t]) - log_z) for t in best)
    return _entry(model, token, float(logits[token]) - log_z, top)


def _entry(model: Model, token: int, logprob: float, top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
    piece = model.token_piece(token, special=True)
    return TokenLogprob(piece.decode("utf-8", errors="replace"), logprob, tuple(piece), top)


class TokenSequence:
    """Draw and push the tokens of one generation (see the module docstring); `phases` is the
    generation's engine.PhaseStream (text and reasoning/answer split).

    Raises (on creation):
        RequestError: a logit_bias token id outside the vocabulary.
        UsageError: a grammar llama.cpp cannot parse.
    """

    def __init__(self, model: Model, params: GenerationParams, phases, opens_think: bool):
        self.model = model
        self.params = params
        self.phases = phases
        for token, _ in params.logit_bias or ():
            if not 0 <= token < model.n_vocab:
                raise RequestError("logit_bias", f"logit_bias: token id {token} is not in the vocabulary "
                                                 f"(0..{model.n_vocab - 1})")
        constrained = Sampler(model, SamplingParams.of(params)) if params.grammar else None
        after_think = opens_think and constrained is not None and CLOSE_TAG not in params.grammar
        self._plain = Sampler(model, SamplingParams.of(params, grammar=False)) if after_think or not constrained \
            else None
        self._constrained = constrained
        self._sampler = self._plain or constrained  # the grammar waits for the think block to close
        self._forced: list[int] = []
        self._drew_forced = False  # the last drawn token was one of the forced ones
        # a grammar that applies from the first token shapes the think block itself: forcing
        # tokens past it would break it (llama.cpp aborts on a token its grammar refuses)
        self._budget_spent = params.reasoning_budget is None or self._sampler is constrained
        self._stops = StopMatcher(params.stop) if params.stop else None
        # Under a reasoning template without the think prefix the phase split holds the text back
        # until a `</think>` or the end shows whether it was reasoning or the answer, so the stop
        # matcher sees none of it: the tail of that undecided text is watched here instead. A stop
        # string in it ends the generation there, and the end makes the held text the answer.
        self._undecided: bytes | None = b"" if self._stops and not opens_think else None
        self._stop_window = 4 * max(map(len, params.stop or ("",))) + 16  # bytes: enough for any stop
        self._held_stop = False
        self._top_n = (params.top_logprobs or 0) if params.logprobs else -1  # -1: no logprobs
        self._pending: dict[type, list[TokenLogprob]] = {Reasoning: [], Answer: []}
        self._last: TokenLogprob | None = None

    @property
    def stopped(self) -> bool:
        """A stop string matched: the generation ends here, with finish_reason stop."""
        return bool(self._stops and (self._stops.stopped or self._held_stop))

    @property
    def steady(self) -> bool:
        """No token to come changes how the next ones are drawn: no grammar waiting for the think
        block to close, no reasoning budget left to enforce. Speculative decoding draws several
        tokens before their text is pushed, so it waits for this."""
        return self._budget_spent and (self._constrained is None or self._sampler is self._constrained)

    def draw(self, ctx: Context, row: int = -1) -> int:
        """The next token: drawn from batch row `row`'s logits, or the next of the tokens that
        close a think block whose budget is spent."""
        if not self._budget_spent and self.phases.stopped_thinking \
                and self.phases.reasoning_tokens >= self.params.reasoning_budget:
            self._budget_spent = True
            self._forced = self.model.tokenize(CLOSE_THINK, add_special=False, parse_special=True)
        self._drew_forced = bool(self._forced)
        if self._forced:
            token = self._forced.pop(0)
            self._sampler.accept(token)  # penalties see it; a grammar is not yet in this chain
        else:
            token = self._sampler.sample(ctx, row)
        if self._top_n >= 0:
            self._last = token_logprob(self.model, ctx.logits_row(row), token, self._top_n)
        return token

    def push(self, token: int) -> list[Event]:
        """The text events of a drawn token (not an end-of-generation one)."""
        thinking = self.phases.stopped_thinking
        events = self.phases.push(token)
        if self._undecided is not None:
            self._watch_held_text(token, events)
        if self._last is not None:  # a token that closes the think block is reasoning, and so are
            # all the tokens the engine appended to close it (the "\n\n" after </think> too): the
            # answer's logprobs are the model's own draws
            kind = Reasoning if thinking or self.phases.stopped_thinking or self._drew_forced else Answer
            self._pending[kind].append(self._last)
            self._last = None
        if self._sampler is not self._constrained and self._constrained is not None and not self._forced \
                and not self.phases.stopped_thinking:
            self._sampler = self._constrained  # the answer starts: the grammar joins
        return self._attach(self._cut(events))

    def _watch_held_text(self, token: int, events: list[Event]) -> None:
        if events or self.phases.stopped_thinking:  # the split has decided: the stop matcher takes over
            self._undecided = None
            return
        self._undecided = (self._undecided + self.model.token_piece(token, special=True))[-self._stop_window:]
        tail = self._undecided.decode("utf-8", errors="ignore")
        self._held_stop = any(stop in tail for stop in self.params.stop)

    def finish(self) -> list[Event]:
        """The held-back text at the end of the generation."""
        events = self._cut(self.phases.finish())
        if self._stops is not None and (tail := self._stops.finish()):
            events.append(Answer(tail))
        return self._attach(events)

    def _cut(self, events: list[Event]) -> list[Event]:
        """Answer text through the stop matcher; empty pieces dropped."""
        if self._stops is not None:
            events = [replace(e, text=self._stops.feed(e.text)) if isinstance(e, Answer) else e for e in events]
        return [e for e in events if e.text]

    def _attach(self, events: list[Event]) -> list[Event]:
        """The logprobs of the tokens pushed so far, on the last piece of their phase."""
        if self._top_n < 0:
            return events
        for kind in (Reasoning, Answer):
            last = max((i for i, e in enumerate(events) if isinstance(e, kind)), default=None)
            if last is not None and self._pending[kind]:
                events[last] = replace(events[last], logprobs=tuple(self._pending[kind]))
                self._pending[kind] = []
        return events

    @property
    def reasoning_tokens(self) -> int:
        return self.phases.reasoning_tokens

    @property
    def answer_tokens(self) -> int:
        return self.phases.answer_tokens

    @property
    def stopped_thinking(self) -> bool:
        return self.phases.stopped_thinking

    def close(self) -> None:
        for sampler in (self._plain, self._constrained):
            if sampler is not None:
                sampler.close()
