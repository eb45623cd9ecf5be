"""ReasoningSplitter: a model's text stream → reasoning and answer deltas.

DeepSeek-R1 models write their reasoning inside `<think>…</think>` and the answer after it.
The splitter handles every way that shows up in a stream:
- the prompt already opened `<think>\\n` (newer R1 templates, or the Engine's think prefix for
  R1-family models), so only `</think>` comes; a model that opens `<think>` once more anyway
  has that tag dropped;
- the model opens `<think>` itself;
- an empty think block;
- output that ends before `</think>` (everything stays reasoning, nothing is an answer);
- tags cut across tokens, or arriving whole as special tokens;
- models that never think (the first text is not `<think>`: all of it is answer);
- a reasoning model whose prompt did not open the block and that closes it anyway, with a
  bare `</think>` (`bare_close`): its text is held back until `</think>` shows it was
  reasoning, or the end of the stream shows it was the answer. Nothing is shown as answer
  and later turns out to be reasoning; the price is that such a reply streams only after
  `</think>` (vLLM's R1 parser streams it as reasoning instead, and then calls a reply that
  never thinks all reasoning). R1-family models get the think prefix, so this is the rare
  path: `--no-think-prefix`, or a reasoning template the Engine does not recognise as R1.

Whitespace just inside the think block and around the answer is trimmed, so an empty think
block yields no reasoning text at all. A model whose template knows nothing of think blocks
(`bare_close` off) has a `</think>` in its answer passed through as text.
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
        in_reasoning: the prompt already opened the think block (it ends in `<think>\\n`).
        bare_close: the model may close a think block its prompt did not open (a reasoning
            template): text before a `<think>` is held until `</think>` or the end decides.
    """

    def __init__(self, in_reasoning: bool = False, bare_close: bool = False):
        self.phase: Phase = "reasoning" if in_reasoning else "start"
        self.bare_close = bare_close
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
                if self.bare_close:
                    at = self._held.find(CLOSE)
                    if at < 0:
                        return events  # reasoning or answer: </think> or the end decides
                    self.phase = "reasoning"
                    continue
                self.phase = "answer"
                continue
            if self.phase == "reasoning":
                if not self._reasoning_started:
                    stripped = self._held.lstrip()
                    if stripped.startswith(OPEN):  # a model that reopens a block its prompt opened
                        self._held = stripped[len(OPEN):]
                        continue
                    if stripped and OPEN.startswith(stripped):
                        return events
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
        """Flush what was held back at the end of the stream (trailing whitespace is dropped).

        Text still undecided at the start (no `<think>`, no `</think>`) was the answer."""
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

    @property
    def in_think_block(self) -> bool:
        """Whether the text so far ends inside the think block (no answer has started)."""
        return self.phase == "reasoning"
