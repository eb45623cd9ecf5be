"""Messages from the generation and model-loading workers to the UI.

Workers run in threads and talk to the UI only through these (post_message is thread-safe).
Deltas are coalesced in the worker, so the UI sees at most a few dozen per second. Turn
messages go to the chat view that started the turn and stop there (no bubbling).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from edgeds.events import Stats


@dataclass
class TurnStarted(Message, bubble=False):
    """The running turn's prompt is known: how many tokens of the context it takes."""

    prompt_tokens: int


@dataclass
class TurnDelta(Message, bubble=False):
    """New reasoning and/or answer text of the running turn (several tokens joined)."""

    reasoning: str
    answer: str
    reasoning_pieces: int  # reasoning deltas in this batch (about one per token)
    pieces: int  # all deltas in this batch, reasoning and answer: about the tokens generated


@dataclass
class TurnDone(Message, bubble=False):
    """The running turn ended (stop, length, cancelled or error)."""

    stats: Stats


@dataclass
class TurnFailed(Message, bubble=False):
    """The engine raised before or while generating (context overflow, a load problem)."""

    error: str


@dataclass
class ModelLoaded(Message):
    """A model finished loading; `engine` replaces the current one."""

    engine: object
    spec: str


@dataclass
class ModelFailed(Message):
    """A model failed to load; the current one (if any) stays."""

    spec: str
    error: str
