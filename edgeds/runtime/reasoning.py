"""ReasoningSplitter: a model's text stream → reasoning and answer deltas.

DeepSeek-R1 models write their reasoning inside `<think>…</think>` and the answer after it.
The splitter handles every way that shows up in a stream:
- the chat template already opened `<think>\\n` (newer R1 templates), so only `</think>` comes;
- the model opens `<think>` itself;
- an empty think block;
- output that ends before `</think>` (everything stays reasoning, nothing is an answer);
- tags cut across tokens, or arriving whole as special tokens;
- models that never think (the first text is not `<think>`: all of it is answer).

Whitespace just inside the think block and around the answer is trimmed, so an empty think
block yields no reasoning text at all.
"""

from __future__ import annotations

from typing import Literal

from edgeds.events import Answer, Reasoning

OPEN = "<think>"
CLOSE = "</think>"

Phase = Literal["start", "reasoning", "answer"]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    """Feed text pieces in order; get `Reasoning` and `Answer` events back.

    Args:
        in_reasoning: the prompt already opened the think block (template ends in `<think>\\n`).
    """

    def __init__(self, in_reasoning: bool = False):
        self.phase: Phase = "reasoning" if in_reasoning else "start"
        self._held = ""  # text that may be the start of a tag, or whitespace not yet known to matter
        self._reasoning_started = False
        self._answer_started = False

    def feed(self, text: str) -> list[Reasoning | Answer]:
        self._held += text
        events: list[Reasoning | Answer] = []
        while True:
            if self.phase == "start":
                stripped = self._held.lstrip()
                if not stripped:
                    return events
                if stripped.startswith(OPEN):
                    self._held = stripped[len(OPEN):]
                    self.phase = "reasoning"
                    continue
                if OPEN.startswith(stripped):
                    return events  # could still become <think>
                self.phase = "answer"
                continue
            if self.phase == "reasoning":
                at = self._held.find(CLOSE)
                if at >= 0:
                    self._emit_reasoning(self._held[:at].rstrip(), events)
                    self._held = self._held[at + len(CLOSE):]
                    self.phase = "answer"
                    continue
                keep = _partial_suffix(self._held, CLOSE)
                body = self._held[: len(self._held) - keep]
                ready = body.rstrip()
                self._emit_reasoning(ready, events)
                self._held = self._held[len(ready):]
                return events
            # answer: trim leading whitespace, hold trailing whitespace until more text comes
            ready = self._held.rstrip()
            if not self._answer_started:
                ready = ready.lstrip()
                if not ready:
                    return events
                self._held = self._held.lstrip()
                self._answer_started = True
            if ready:
                events.append(Answer(ready))
            self._held = self._held[len(ready):]
            return events

    def _emit_reasoning(self, text: str, events: list) -> None:
        if not self._reasoning_started:
            text = text.lstrip()
            if not text:
                return
            self._reasoning_started = True
            # drop the whitespace already consumed before this text
        if text:
            events.append(Reasoning(text))

    def finish(self) -> list[Reasoning | Answer]:
        """Flush what was held back at the end of the stream (trailing whitespace is dropped)."""
        held, self._held = self._held, ""
        if self.phase == "reasoning":
            text = held.rstrip()
            if not self._reasoning_started:
                text = text.lstrip()
            return [Reasoning(text)] if text else []
        if self.phase == "start":
            text = held.strip()
            if text:
                self.phase = "answer"
                return [Answer(text)]
        return []
