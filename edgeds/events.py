"""The event vocabulary every front end consumes: reasoning, answer, done(stats).

Every backend (Engine, Scheduler, a remote server) yields these; `edgeds run --json` prints
`to_dict(event)` as JSON lines, the TUI renders them, batch and serve `collect` them into a
`Completion`. `GenerationTimer` is the one place where a generation's timings become Stats.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Iterable, Literal, Union

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability under the model (log-softmax of its raw logits, before any
    penalty, bias, grammar or temperature), with its likeliest alternatives when asked for."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top_logprobs: tuple["TokenLogprob", ...] = ()


@dataclass(frozen=True)
class Reasoning:
    """A piece of the model's reasoning (text inside the think block)."""

    text: str
    type: Literal["reasoning"] = "reasoning"
    logprobs: tuple[TokenLogprob, ...] | None = None  # the tokens shown by this piece, when asked for


@dataclass(frozen=True)
class Answer:
    """A piece of the answer (text after the think block, or all text of a model that never thinks)."""

    text: str
    type: Literal["answer"] = "answer"
    logprobs: tuple[TokenLogprob, ...] | None = None  # the tokens shown by this piece, when asked for


@dataclass(frozen=True)
class Stats:
    """What one generation cost.

    Attributes:
        prompt_tokens: tokens of the prompt (those whose KV was reused from a cached prefix count too).
        reasoning_tokens: generated tokens that belong to the reasoning, tags included.
        answer_tokens: generated tokens that belong to the answer.
        ttft_s: seconds from the call to the first generated token.
        prompt_tok_s: prompt tokens per second of prompt processing.
        decode_tok_s: generated tokens per second after the first one.
        finish_reason: stop (end of generation or a stop string), length (max_tokens or context
            full), cancelled, or error.
        error: the error message when finish_reason is "error".
        stopped_thinking: the reply ended inside its think block: reasoning and no answer
            (`thinking_note` says why, for front ends to show).
        draft_tokens: tokens a draft proposed (speculative decoding; 0 without a draft).
        accepted_tokens: of those, the ones the model's own samples matched and kept.
        cached_tokens: prompt tokens whose KV came from a cached prefix instead of being
            decoded (OpenAI's `prompt_tokens_details.cached_tokens`).
    """

    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    ttft_s: float = 0.0
    prompt_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    finish_reason: FinishReason = "stop"
    error: str | None = None
    stopped_thinking: bool = False
    draft_tokens: int = 0
    accepted_tokens: int = 0
    cached_tokens: int = 0

    @property
    def decoded_prompt_tokens(self) -> int:
        """Prompt tokens actually decoded for this generation."""
        return self.prompt_tokens - self.cached_tokens

    @property
    def completion_tokens(self) -> int:
        return self.reasoning_tokens + self.answer_tokens

    @property
    def thinking_note(self) -> str | None:
        """'stopped while thinking: <why>' for a reply that ended inside its think block, else None."""
        if not self.stopped_thinking:
            return None
        return f"stopped while thinking: {_WHY_STOPPED.get(self.finish_reason, self.finish_reason)}"


# finish_reason → how a front end words it after "stopped while thinking: "
_WHY_STOPPED = {"length": "max tokens reached", "stop": "the model ended its reply without an answer",
                "cancelled": "cancelled"}


@dataclass(frozen=True)
class Done:
    """The last event of every generation."""

    stats: Stats
    type: Literal["done"] = "done"


Event = Union[Reasoning, Answer, Done]


def to_dict(event: Event) -> dict:
    """The JSON form: {"type": "reasoning", "text": …} or {"type": "done", "stats": {…}}."""
    data = asdict(event)
    if isinstance(event, Done) and data["stats"]["error"] is None:
        del data["stats"]["error"]
    if data.get("logprobs", 0) is None:
        del data["logprobs"]
    return {"type": data.pop("type"), **data}


@dataclass(frozen=True)
class Completion:
    """A whole generation: the joined reasoning and answer, and its stats."""

    reasoning: str
    answer: str
    stats: Stats


def collect(events: Iterable[Event]) -> Completion:
    """Join a generation's deltas into one Completion."""
    reasoning: list[str] = []
    answer: list[str] = []
    stats = Stats(finish_reason="error", error="the generation ended without stats")
    for event in events:
        if isinstance(event, Reasoning):
            reasoning.append(event.text)
        elif isinstance(event, Answer):
            answer.append(event.text)
        else:
            stats = event.stats
    return Completion("".join(reasoning), "".join(answer), stats)


def failed(error: str, *, prompt_tokens: int = 0) -> Completion:
    """The Completion of a generation that failed before producing anything."""
    return Completion("", "", Stats(prompt_tokens=prompt_tokens, finish_reason="error", error=error))


class GenerationTimer:
    """The clock of one generation, started when it is created: mark the end of the prompt and
    the first generated token, then turn the counts into Stats."""

    def __init__(self) -> None:
        self.t_start = time.perf_counter()
        self.t_prompt: float | None = None
        self.t_first: float | None = None

    def prompt_done(self) -> None:
        self.t_prompt = time.perf_counter()

    def token(self) -> None:
        """A token was generated (only the first one is timed)."""
        if self.t_first is None:
            self.t_first = time.perf_counter()

    def stats(self, *, prompt_tokens: int, generated: int, reasoning_tokens: int, answer_tokens: int,
              finish_reason: FinishReason, decoded_prompt_tokens: int | None = None,
              error: str | None = None, stopped_thinking: bool = False,
              draft_tokens: int = 0, accepted_tokens: int = 0) -> Stats:
        """`decoded_prompt_tokens`: prompt tokens actually evaluated (fewer when a cached prefix
        was reused); default all of them. `stopped_thinking`: the text ended inside the think
        block (ignored for an error, which has its own message)."""
        t_end = time.perf_counter()
        decoded = prompt_tokens if decoded_prompt_tokens is None else decoded_prompt_tokens
        prompt_s = (self.t_prompt or t_end) - self.t_start
        decode_s = t_end - (self.t_first or t_end)
        return Stats(
            prompt_tokens=prompt_tokens,
            reasoning_tokens=reasoning_tokens,
            answer_tokens=answer_tokens,
            ttft_s=round((self.t_first or t_end) - self.t_start, 4),
            prompt_tok_s=round(decoded / prompt_s, 2) if self.t_prompt and prompt_s > 0 and decoded else 0.0,
            decode_tok_s=round((generated - 1) / decode_s, 2) if generated > 1 and decode_s > 0 else 0.0,
            finish_reason=finish_reason,
            error=error if finish_reason == "error" else None,
            stopped_thinking=stopped_thinking and finish_reason != "error",
            draft_tokens=draft_tokens,
            accepted_tokens=accepted_tokens,
            cached_tokens=prompt_tokens - decoded,
        )
