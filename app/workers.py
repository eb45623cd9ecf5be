"""The blocking work of the app's thread workers: streaming a reply and loading a model.

Both run off the UI thread and report only through messages (`messages.py`); neither raises,
because the app must outlive any engine failure.
"""

from __future__ import annotations

import time
from typing import Callable

from textual.message import Message

from edgeds.errors import EdgedsError
from edgeds.events import Answer, Done, Reasoning, Stats
from edgeds.runtime.params import GenerationParams

from edgeds.app.messages import ModelFailed, ModelLoaded, TurnDelta, TurnDone, TurnFailed, TurnStarted

FLUSH_S = 0.1  # a reply is posted as at most ~10 deltas a second


def _failure(err: Exception) -> str:
    """What the user is told: a user-fixable error as is, anything else with its type."""
    return str(err) if isinstance(err, EdgedsError) else f"{type(err).__name__}: {err}"


def stream_reply(engine, messages: list[dict], params: GenerationParams, post: Callable[[Message], object],
                 cancelled: Callable[[], bool] = lambda: False) -> None:
    """Post TurnStarted with the prompt's length, then `engine.generate`'s text as coalesced
    TurnDeltas, then TurnDone.

    The first delta goes out at once, later ones at most every FLUSH_S; an exception ends
    the turn with TurnFailed after the text so far. `cancelled()` turning true stops the
    generation, also when it turned true before the engine started (`Engine.generate` forgets
    an earlier `cancel()`).
    """
    reasoning: list[str] = []
    answer: list[str] = []
    last = 0.0

    def flush() -> None:
        nonlocal last
        if reasoning or answer:
            post(TurnDelta("".join(reasoning), "".join(answer), len(reasoning), len(reasoning) + len(answer)))
            reasoning.clear()
            answer.clear()
        last = time.monotonic()

    try:
        post(TurnStarted(len(engine.prompt_tokens(messages)[0])))
        if cancelled():
            post(TurnDone(Stats(finish_reason="cancelled")))
            return
        for event in engine.generate(messages, params):
            if cancelled():
                engine.cancel()
            if isinstance(event, Reasoning):
                reasoning.append(event.text)
            elif isinstance(event, Answer):
                answer.append(event.text)
            elif isinstance(event, Done):
                flush()
                post(TurnDone(event.stats))
                return
            if time.monotonic() - last >= FLUSH_S:
                flush()
    except Exception as err:  # noqa: BLE001 - the app must outlive any engine failure
        flush()
        post(TurnFailed(_failure(err)))


def open_model(spec: str, *, n_ctx: int | None = None, moe_offload: str = "auto"):
    """A GGUF path or a downloaded registry id -> Engine (no downloads from inside the TUI)."""
    from edgeds.loader import open_engine
    from edgeds.machine.hardware import threads_beside_ui

    return open_engine(spec, n_ctx=n_ctx, n_threads=threads_beside_ui(), moe_offload=moe_offload,
                       pull=False, progress=False)


def load_model(opener: Callable, spec: str, *, n_ctx: int | None, moe_offload: str) -> ModelLoaded | ModelFailed:
    """Open `spec` with `opener` (e.g. `open_model`); the message that says how it went."""
    try:
        engine = opener(spec, n_ctx=n_ctx, moe_offload=moe_offload)
    except Exception as err:  # noqa: BLE001 - a model that fails to load must not end the app
        return ModelFailed(spec, _failure(err))
    return ModelLoaded(engine, spec)
