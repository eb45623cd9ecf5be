"""The event vocabulary every front end consumes: reasoning, answer, done(stats).

`Engine.generate` yields these; `edgeds run --json` prints `to_dict(event)` as JSON lines,
the TUI renders them, batch and serve aggregate them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Union

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class Reasoning:
    """A piece of the model's reasoning (text inside the think block)."""

    text: str
    type: Literal["reasoning"] = "reasoning"


@dataclass(frozen=True)
class Answer:
    """A piece of the answer (text after the think block, or all text of a model that never thinks)."""

    text: str
    type: Literal["answer"] = "answer"


@dataclass(frozen=True)
class Stats:
    """What one generation cost.

    Attributes:
        prompt_tokens: tokens evaluated for the prompt (after any prefix-cache reuse they still count).
        reasoning_tokens: generated tokens that belong to the reasoning, tags included.
        answer_tokens: generated tokens that belong to the answer.
        ttft_s: seconds from the call to the first generated token.
        prompt_tok_s: prompt tokens per second of prompt processing.
        decode_tok_s: generated tokens per second after the first one.
        finish_reason: stop (end of generation or a stop string), length (max_tokens or context
            full), cancelled, or error.
        error: the error message when finish_reason is "error".
    """

    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    ttft_s: float = 0.0
    prompt_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    finish_reason: FinishReason = "stop"
    error: str | None = None

    @property
    def completion_tokens(self) -> int:
        return self.reasoning_tokens + self.answer_tokens


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
    return {"type": data.pop("type"), **data}
