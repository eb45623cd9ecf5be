"""`edgeds run`'s front end: events → a terminal (or a pipe).

Reasoning goes to stderr (dim where stderr is a terminal), the answer plainly to stdout, so a
pipe gets the answer alone. With `json_lines`, every event is printed as one JSON line on stdout.
With `progress` (stdout redirected, stderr a terminal), a line on stderr counts the tokens while
nothing else shows that the model is still writing. A reply that ends inside its think block
gets a line that says so (`Stats.thinking_note`).

Per token the loop does little: a text event is written as it comes, a JSON line is put
together from pre-encoded halves, and the streams are flushed at most every FLUSH_EVERY_S
(and at the end), since a flush is a write system call and the decode loop waits for it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Iterable, TextIO

from edgeds.events import Done, Event, Reasoning, Stats, to_dict

DIM, RESET = "\x1b[2m", "\x1b[0m"
CLEAR_LINE = "\r\x1b[2K"
PROGRESS_EVERY_S = 0.25
FLUSH_EVERY_S = 1 / 30  # faster than the eye reads; a pipe's reader gets each line as late as this
JSON_TEXT_HEAD = {kind: '{"type": "' + kind + '", "text": ' for kind in ("reasoning", "answer")}  # to_dict's form


@dataclass(frozen=True)
class Output:
    """How to show a generation."""

    json_lines: bool = False
    hide_reasoning: bool = False
    verbose: bool = False
    progress: bool = False  # a token count on stderr while the text goes elsewhere


def format_stats(stats: Stats) -> str:
    parts = [
        f"prompt {stats.prompt_tokens} tok @ {stats.prompt_tok_s:.1f} tok/s",
        f"ttft {stats.ttft_s:.2f} s",
        f"reasoning {stats.reasoning_tokens} + answer {stats.answer_tokens} tok @ {stats.decode_tok_s:.1f} tok/s",
        f"finish {stats.finish_reason}",
    ]
    if stats.draft_tokens:
        parts.insert(3, f"draft {stats.accepted_tokens}/{stats.draft_tokens} accepted "
                        f"({100 * stats.accepted_tokens / stats.draft_tokens:.0f}%)")
    if stats.error:
        parts.append(f"error {stats.error}")
    return " · ".join(parts)


class _ProgressLine:
    """A token count on stderr, redrawn at most every PROGRESS_EVERY_S; off unless `enabled`."""

    def __init__(self, stderr: TextIO, enabled: bool):
        self.stderr = stderr
        self.enabled = enabled
        self.shown_at: float | None = None

    def update(self, tokens: int) -> None:
        if self.enabled and time.monotonic() - (self.shown_at or 0.0) >= PROGRESS_EVERY_S:
            self.stderr.write(f"{CLEAR_LINE}edgeds: ~{tokens} tokens, the answer goes to stdout")
            self.stderr.flush()
            self.shown_at = time.monotonic()

    def clear(self) -> None:
        if self.shown_at is not None:
            self.stderr.write(CLEAR_LINE)


def show(events: Iterable[Event], output: Output, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> Stats:
    """Print a generation as it streams (to sys.stdout and sys.stderr as they are at the call); returns its stats."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    dim = stderr.isatty()
    in_reasoning = False
    answered = False
    stats = Stats(finish_reason="error", error="the generation ended without stats")
    tokens = 0  # text events so far: about one per token
    progress = _ProgressLine(stderr, output.progress)
    flushed_at = time.monotonic()
    for event in events:
        if isinstance(event, Done):
            stats = event.stats
            if output.json_lines:
                stdout.write(json.dumps(to_dict(event), ensure_ascii=False) + "\n")
            continue
        tokens += 1
        if isinstance(event, Reasoning) and output.hide_reasoning:
            progress.update(tokens)
            continue
        if output.json_lines:
            stdout.write(JSON_TEXT_HEAD[event.type] + json.dumps(event.text, ensure_ascii=False) + "}\n")
        elif isinstance(event, Reasoning):
            if not in_reasoning and dim:
                stderr.write(DIM)
            in_reasoning = True
            stderr.write(event.text)
        else:
            if in_reasoning:
                stderr.write((RESET if dim else "") + "\n\n")
                stderr.flush()
                in_reasoning = False
            stdout.write(event.text)
            answered = True
            progress.update(tokens)
        now = time.monotonic()
        if now - flushed_at >= FLUSH_EVERY_S:
            stderr.flush()
            stdout.flush()
            flushed_at = now
    progress.clear()
    stdout.flush()
    if not output.json_lines:
        if in_reasoning:
            stderr.write((RESET if dim else "") + "\n")
        if answered:
            stdout.write("\n")
        stdout.flush()
    if stats.thinking_note:
        stderr.write(f"edgeds: {stats.thinking_note}\n")
    if output.verbose:
        stderr.write(format_stats(stats) + "\n")
    stderr.flush()
    return stats
