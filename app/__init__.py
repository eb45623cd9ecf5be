"""edgeds.app: the Textual chat app (`edgeds chat`)."""

from __future__ import annotations

from edgeds.app.chat_app import ChatApp


def run_chat(model=None, **options) -> None:
    """Run the chat app in the terminal; `options` go to `ChatApp`."""
    ChatApp(model, **options).run()


__all__ = ["ChatApp", "run_chat"]
