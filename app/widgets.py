"""The chat app's widgets: the prompt box and the messages, with a live "Thinking" section.

An assistant message streams its reasoning and its answer through `MarkdownStream`s (Textual
batches the appends), and renders the whole answer once more when the turn ends, because a
streamed append can leave half-open blocks (an unclosed code fence) rendered wrongly.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Collapsible, Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownStream

from edgeds.events import Stats
from edgeds.store import StoredMessage

from edgeds.app.attachments import file_summary

_CODE_RE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def code_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a Markdown text, in order."""
    return [m.group(1).rstrip("\n") for m in _CODE_RE.finditer(markdown)]


class PromptInput(TextArea):
    """Multi-line prompt: Enter sends; Shift+Enter, Ctrl+J or Alt+Enter insert a newline.

    The app's Ctrl+Y (copy) and Ctrl+E (export) are priority bindings, so they win over the
    text area's redo and end-of-line keys (End still goes to the end of the line).
    """

    BINDINGS = [
        Binding("enter", "submit", "Send", id="prompt.send", priority=True, show=False),
        Binding("shift+enter,ctrl+j,alt+enter", "newline", "Newline", key_display="⇧↵", id="prompt.newline", priority=True),
    ]

    @dataclass
    class Submitted(Message):
        prompt: PromptInput
        text: str

        @property
        def control(self) -> PromptInput:
            return self.prompt

    def action_submit(self) -> None:
        if self.text.strip():
            self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.insert("\n")


class UserMessage(Static):
    """A user turn; an attached file shows as one line, not its whole content."""

    def __init__(self, content: str, **kwargs):
        self.text = content
        super().__init__(file_summary(content), markup=False, **kwargs)


class ThinkingSection(Collapsible):
    """The reasoning of one reply: open while the model thinks, collapsed once it answers.

    A click on its title line (or Enter on the focused title, or Ctrl+T for the last reply)
    opens and closes it.
    """


# A reply that ended before its answer began: what its message says, by finish_reason, where
# its stats do not say (stats stored before they had `stopped_thinking`).
THINKING_STOPS = {
    "length": "stopped while thinking: max tokens reached",
    "cancelled": "cancelled while thinking",
    "error": "failed while thinking",
}


def thinking_stop(stats: Stats | None, finish_reason: str | None, reasoning: str, answer: str) -> str | None:
    """Why a finished reply has reasoning but no answer (None: it has an answer, or no reasoning)."""
    note = getattr(stats, "thinking_note", None)  # the engine's word, where its Stats carry one
    if note:
        return note
    if reasoning.strip() and not answer.strip():
        return THINKING_STOPS.get(finish_reason or "")
    return None


def stats_line(stats: Stats, note: str | None = None) -> str:
    """ttft · tok/s · tokens, then `note` or the finish reason when it is not "stop"."""
    parts = [
        f"ttft {stats.ttft_s:.2f}s",
        f"{stats.decode_tok_s:.1f} tok/s",
        f"{stats.completion_tokens} tokens"
        + (f" ({stats.reasoning_tokens} thinking)" if stats.reasoning_tokens else ""),
    ]
    if note or stats.finish_reason != "stop":
        parts.append(note or stats.finish_reason)
    return " · ".join(parts)


class AssistantMessage(Vertical):
    """One assistant turn: Thinking section, answer Markdown, stats line."""

    can_focus = False

    def __init__(self, *, answer: str = "", reasoning: str = "", reasoning_s: float | None = None,
                 finish_reason: str | None = None, stats: Stats | None = None, **kwargs):
        super().__init__(**kwargs)
        self.answer = answer
        self.reasoning = reasoning
        self.reasoning_pieces = 0
        self.reasoning_s = reasoning_s
        self.finish_reason = finish_reason
        self.stats = stats
        self.streaming = finish_reason is None
        self._started = time.monotonic()
        self._answer_stream: MarkdownStream | None = None
        self._reasoning_stream: MarkdownStream | None = None
        self._ticker = None

    def compose(self) -> ComposeResult:
        stopped = self.stop_note is not None
        thinking = ThinkingSection(
            Markdown(self.reasoning, classes="reasoning-text"),
            title=self._thinking_title(), collapsed=not (self.streaming or stopped), classes="thinking",
        )
        thinking.set_class(not (self.reasoning or self.streaming), "-empty")
        yield thinking
        yield Markdown(self.answer, classes="answer")
        yield Static(self._footer(), classes="stats", markup=False)
        self.set_class(stopped or self.finish_reason in ("cancelled", "error"), "-interrupted")

    def on_mount(self) -> None:
        if self.streaming:
            self._ticker = self.set_interval(0.25, self._tick)

    @property
    def thinking(self) -> ThinkingSection:
        return self.query_one(ThinkingSection)

    @property
    def answer_view(self) -> Markdown:
        return self.query_one(".answer", Markdown)

    @property
    def stop_note(self) -> str | None:
        """Why this finished reply has no answer, when it stopped while the model was thinking."""
        return None if self.streaming else thinking_stop(self.stats, self.finish_reason, self.reasoning, self.answer)

    def _thinking_title(self) -> str:
        if self.streaming and not self.answer:
            seconds = time.monotonic() - getattr(self, "_started", time.monotonic())
            return f"Thinking… {seconds:.1f}s · {self.reasoning_pieces} tokens"
        tokens = self.stats.reasoning_tokens if self.stats else self.reasoning_pieces
        seconds = f"{self.reasoning_s:.1f}s" if self.reasoning_s is not None else ""
        if self.stop_note:
            head = self.stop_note.split(":")[0].capitalize() + (f" after {seconds}" if seconds else "")
        else:
            head = f"Thought for {seconds}" if seconds else "Thoughts"
        return " · ".join(p for p in (head, f"{tokens} tokens" if tokens else "") if p)

    def _footer(self) -> str:
        if self.stats is not None:
            return stats_line(self.stats, self.stop_note)
        if self.finish_reason and self.finish_reason != "stop":
            return self.stop_note or self.finish_reason
        return "…" if self.streaming else ""

    def _tick(self) -> None:
        if self.streaming and not self.answer:
            self.thinking.title = self._thinking_title()

    async def add(self, reasoning: str, answer: str, reasoning_pieces: int) -> None:
        """Stream new text in: reasoning into the open Thinking section, answer below it."""
        if reasoning and (self.reasoning.strip() or reasoning.strip()):  # skip leading blank lines
            self.reasoning += reasoning
            self.reasoning_pieces += reasoning_pieces
            if self._reasoning_stream is None:
                self._reasoning_stream = Markdown.get_stream(self.query_one(".reasoning-text", Markdown))
            await self._reasoning_stream.write(reasoning)
            self.thinking.title = self._thinking_title()
        if answer:
            if not self.answer:
                answer = answer.lstrip()
                if not answer:
                    return
                self.reasoning_s = time.monotonic() - self._started
                self.thinking.collapsed = True
                if not self.reasoning.strip():
                    self.thinking.add_class("-empty")
                self._answer_stream = Markdown.get_stream(self.answer_view)
                self.answer = answer
                self.thinking.title = self._thinking_title()
            else:
                self.answer += answer
            await self._answer_stream.write(answer)

    async def stop(self) -> None:
        """Stop streaming: the title's ticker and the Markdown streams."""
        self.streaming = False
        if self._ticker is not None:
            self._ticker.stop()
        for stream in (self._reasoning_stream, self._answer_stream):
            if stream is not None:
                await stream.stop()

    async def finish(self, stats: Stats | None, finish_reason: str) -> None:
        """End the stream: one full render of the answer, title and stats settle."""
        await self.stop()
        self.stats = stats
        self.finish_reason = finish_reason
        if self.reasoning_s is None and self.reasoning:
            self.reasoning_s = time.monotonic() - self._started
        await self.answer_view.update(self.answer)
        if self.reasoning:
            await self.query_one(".reasoning-text", Markdown).update(self.reasoning)
            self.thinking.collapsed = self.stop_note is None  # no answer: the reasoning stays in view
        self.thinking.set_class(not self.reasoning.strip(), "-empty")
        self.thinking.title = self._thinking_title()
        self.query_one(".stats", Static).update(self._footer())
        self.set_class(self.stop_note is not None or finish_reason in ("cancelled", "error"), "-interrupted")

    def on_click(self, event: events.Click) -> None:
        """Click copies the answer; a click on a code block copies just that block. Clicks on
        the Thinking section are its own (its title line opens and closes it)."""
        widget = event.widget
        fences = list(self.answer_view.query("MarkdownFence"))
        while widget is not None and widget is not self:
            if isinstance(widget, ThinkingSection):
                return
            if widget in fences:
                blocks = code_blocks(self.answer)
                index = fences.index(widget)
                if index < len(blocks):
                    self.app.copy_to_clipboard(blocks[index])
                    self.app.notify("Code block copied")
                    return
            widget = widget.parent
        if self.answer:
            self.app.copy_to_clipboard(self.answer)
            self.app.notify("Reply copied")


def stored_message(message: StoredMessage) -> UserMessage | AssistantMessage:
    """The widget that shows a stored message again."""
    if message.role == "user":
        return UserMessage(message.content, classes="user")
    stats = Stats(**message.stats) if message.stats else None
    return AssistantMessage(answer=message.content, reasoning=message.reasoning, reasoning_s=message.reasoning_s,
                            stats=stats, finish_reason=message.finish_reason or "stop")
