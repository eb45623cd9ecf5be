"""DeepSeek's tool-call blocks in a model's answer → OpenAI-style tool calls, incrementally.

DeepSeek models (V3, R1, the R1 distills' template) write their calls as

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
    ```json
    ARGUMENTS
    ```<｜tool▁call▁end｜>
    <｜tool▁call▁begin｜>…<｜tool▁call▁end｜><｜tool▁calls▁end｜>

The parser takes the answer as the text deltas it streams in, and gives back plain text (the
content around the block), the start of each call (its name) and its arguments in fragments,
as soon as they are certain: a text that may be the beginning of a marker is held back until
the next delta shows what it is. Markers may arrive whole (special tokens) or cut anywhere.
A call block that breaks the format (no name line, a header that runs on) is given back as
plain text, so nothing the model wrote is lost.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Union

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
FENCE = "```"

MAX_HEADER = 256  # characters from a call's begin marker to its arguments: type, name, fence
# TYPE<｜tool▁sep｜>NAME\n```json\n — what comes between a call's begin marker and its arguments
_HEADER = re.compile(r"\s*([A-Za-z_]*)" + re.escape(SEP) + r"\s*([^\s`<]+)\s*\n\s*```[A-Za-z]*[ \t]*\n")
_ARGS_END = re.compile(r"\s*```\s*" + re.escape(CALL_END))
_ARGS_END_CHARS = set(" \t\r\n`" + CALL_END)


@dataclass(frozen=True)
class Text:
    """Answer text outside any call block."""
    text: str


@dataclass(frozen=True)
class CallStart:
    """A call begins: its position among the reply's calls, a fresh id and the function's name."""
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    """The next fragment of call `index`'s arguments (JSON text)."""
    index: int
    text: str


Piece = Union[Text, CallStart, CallArguments]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    complete: bool = True  # its arguments' end came (not cut off by a stop string or the end)


def _partial(text: str, markers: tuple[str, ...]) -> int:
    """Where a suffix of `text` starts that may be the beginning of one of `markers`
    (len(text) when none)."""
    longest = max(len(m) for m in markers)
    for start in range(max(0, len(text) - longest + 1), len(text)):
        tail = text[start:]
        if any(m.startswith(tail) for m in markers):
            return start
    return len(text)


def _partial_args_end(text: str) -> int:
    """Where a suffix of `text` starts that may be the beginning of the arguments' end
    (whitespace, the closing fence, the call's end marker)."""
    start = len(text)
    while start > 0 and text[start - 1] in _ARGS_END_CHARS:
        start -= 1
    for i in range(start, len(text)):
        if _may_end_args(text[i:]):
            return i
    return len(text)


def _may_end_args(tail: str) -> bool:
    rest = tail.lstrip()
    if len(rest) <= len(FENCE):
        return FENCE.startswith(rest)
    if not rest.startswith(FENCE):
        return False
    return CALL_END.startswith(rest[len(FENCE):].lstrip())


class ToolCallParser:
    """Feed the answer's text deltas; get back Text, CallStart and CallArguments pieces."""

    def __init__(self):
        self._buffer = ""
        self._state = "text"  # text | calls (between calls in a block) | header | arguments
        self._header_raw = ""  # the call's raw text so far, given back if its header breaks
        self._calls: list[ToolCall] = []
        self._arguments: list[str] = []
        self._closed = 0  # calls whose arguments ended

    @property
    def calls(self) -> list[ToolCall]:
        """The calls parsed so far, arguments whole (read after `finish` for the last one)."""
        return [ToolCall(c.id, c.name, "".join(a).strip(), i < self._closed)
                for i, (c, a) in enumerate(zip(self._calls, self._arguments))]

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        pieces: list[Piece] = []
        while self._buffer and self._step(pieces):
            pass
        return pieces

    def finish(self) -> list[Piece]:
        """The end of the answer: whatever was held back, as what it turned out to be."""
        pieces: list[Piece] = []
        rest, self._buffer = self._buffer, ""
        if self._state == "text" and rest:
            pieces.append(Text(rest))
        elif self._state == "header":
            pieces.append(Text(self._header_raw + rest))
        elif self._state == "arguments" and rest:
            self._add_arguments(pieces, rest)
        self._state = "text"
        return pieces

    # -- one step per state; False: wait for more text ------------------------------------

    def _step(self, pieces: list[Piece]) -> bool:
        return getattr(self, f"_in_{self._state}")(pieces)

    def _in_text(self, pieces: list[Piece]) -> bool:
        found = [(self._buffer.find(m), m) for m in (CALLS_BEGIN, CALL_BEGIN)]
        found = [(at, m) for at, m in found if at >= 0]
        if found:
            at, marker = min(found)
            if at:
                pieces.append(Text(self._buffer[:at]))
            self._buffer = self._buffer[at + len(marker):]
            self._enter(marker)
            return True
        keep = _partial(self._buffer, (CALLS_BEGIN, CALL_BEGIN))
        if keep:
            pieces.append(Text(self._buffer[:keep]))
            self._buffer = self._buffer[keep:]
        return False

    def _in_calls(self, pieces: list[Piece]) -> bool:
        rest = self._buffer.lstrip()
        for marker in (CALL_BEGIN, CALLS_END):
            if rest.startswith(marker):
                self._buffer = rest[len(marker):]
                self._enter(marker)
                return True
        if not rest or _partial(rest, (CALL_BEGIN, CALLS_END)) == 0:
            self._buffer = rest
            return False
        self._state = "text"  # something else after a call: the block ended without its marker
        self._buffer = rest
        return True

    def _enter(self, marker: str) -> None:
        """The state a marker leads to."""
        self._state = {CALLS_BEGIN: "calls", CALL_BEGIN: "header", CALLS_END: "text"}[marker]
        self._header_raw = marker

    def _in_header(self, pieces: list[Piece]) -> bool:
        match = _HEADER.match(self._buffer)
        if match:
            call = ToolCall(f"call_{uuid.uuid4().hex[:24]}", match.group(2), "")
            self._calls.append(call)
            self._arguments.append([])
            pieces.append(CallStart(len(self._calls) - 1, call.id, call.name))
            self._buffer = self._buffer[match.end():]
            self._state = "arguments"
            return True
        if len(self._buffer) > MAX_HEADER or any(m in self._buffer for m in (CALL_END, CALLS_END, CALL_BEGIN)):
            pieces.append(Text(self._header_raw))  # not a call after all: its text is content
            self._state = "text"
            return True
        return False

    def _in_arguments(self, pieces: list[Piece]) -> bool:
        match = _ARGS_END.search(self._buffer)
        if match:
            self._add_arguments(pieces, self._buffer[:match.start()])
            self._buffer = self._buffer[match.end():]
            self._state = "calls"
            self._closed = len(self._calls)
            return True
        keep = _partial_args_end(self._buffer)
        if keep:
            self._add_arguments(pieces, self._buffer[:keep])
            self._buffer = self._buffer[keep:]
        return False

    def _add_arguments(self, pieces: list[Piece], text: str) -> None:
        arguments = self._arguments[-1]
        if not arguments:
            text = text.lstrip()
        if text:
            arguments.append(text)
            pieces.append(CallArguments(len(self._calls) - 1, text))


def parse_tool_calls(answer: str) -> tuple[str, list[ToolCall]]:
    """A whole answer → (its text outside call blocks, the calls)."""
    parser = ToolCallParser()
    pieces = parser.feed(answer) + parser.finish()
    return "".join(p.text for p in pieces if isinstance(p, Text)), parser.calls


def finished_calls(calls: list[ToolCall]) -> bool:
    """The reply made calls and each one's arguments ended: finish_reason `tool_calls`. A call
    cut off (by max_tokens, a stop string or the end of the generation) is kept as written,
    but the reply did not finish by calling."""
    return bool(calls) and all(call.complete for call in calls)
