"""What the chat app tests share: driving the app with Pilot (waiting for thread workers,
sending, recording notifications), a store with a finished exchange, and a hub cache that
holds a registry quant."""

from __future__ import annotations

import time
from pathlib import Path

from edgeds.app import ChatApp
from edgeds.app.widgets import AssistantMessage, PromptInput
from edgeds.catalog.registry import QuantSource
from edgeds.store import Store


async def wait_for(pilot, predicate, timeout: float = 60.0) -> None:
    """Poll until `predicate()` is true (one pause() is not enough for thread workers)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate.__doc__ or predicate}")
        await pilot.pause(0.02)


async def send(pilot, text: str) -> None:
    pilot.app.query_one(PromptInput).load_text(text)
    await pilot.press("enter")


async def reply_done(pilot, timeout: float = 90.0) -> AssistantMessage:
    app = pilot.app
    await wait_for(pilot, lambda: not app.generating and app.query(AssistantMessage), timeout)
    return app.query(AssistantMessage).last()


class RecordingApp(ChatApp):
    """The real app, also recording every notification."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.notes: list[tuple[str, str]] = []

    def notify(self, message, *, severity="information", **kwargs):
        self.notes.append((severity, str(message)))
        super().notify(message, severity=severity, **kwargs)


REPLY = """Use a list comprehension:

```python
squares = [n * n for n in range(10)]
```

It is **faster** than a loop with `append`."""


def store_with_exchange(tmp_path: Path) -> Store:
    """A store with a finished exchange ("Python squares", with reasoning) and an empty chat."""
    store = Store(tmp_path / "chats.db")
    conv = store.create("Python squares", model="tiny")
    store.add(conv.id, "user", "How do I build a list of squares in Python?")
    store.add(conv.id, "assistant", REPLY, reasoning="The user wants squares.\nA comprehension is idiomatic.",
              finish_reason="stop", reasoning_s=1.25,
              stats={"prompt_tokens": 21, "reasoning_tokens": 12, "answer_tokens": 40, "ttft_s": 0.12,
                     "prompt_tok_s": 300.0, "decode_tok_s": 42.5, "finish_reason": "stop", "error": None})
    store.create("Empty chat")
    return store


def cache_quant(cache: Path, source: QuantSource, content: Path) -> None:
    """Put every file of `source` into the hub cache `cache`, laid out as huggingface-hub lays
    it out (refs/REVISION names a snapshot folder), each file a link to `content`."""
    commit = "0" * 40
    repo = cache / f"models--{source.repo.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / source.revision).write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in source.files:
        (snapshot / f.name).symlink_to(content)
