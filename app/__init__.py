"""edgeds.app: the Textual chat app (`edgeds chat`)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from edgeds.app.chat_app import ChatApp

# The decode worker holds the GIL for a moment per token; with the default 5 ms switch interval
# it waited behind the UI's renders (0.95 of bare Engine speed; 1.0 at 0.5 ms).
UI_SWITCH_INTERVAL_S = 0.0005


@contextmanager
def quick_thread_switches(interval: float = UI_SWITCH_INTERVAL_S) -> Iterator[None]:
    """Set the process-wide GIL switch interval for the duration; restore the old one after."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def run_chat(model=None, **options) -> None:
    """Run the chat app in the terminal, switching threads quickly while it runs; `options` go to `ChatApp`."""
    with quick_thread_switches():
        ChatApp(model, **options).run()


__all__ = ["ChatApp", "run_chat"]
