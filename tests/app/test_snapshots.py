"""SVG snapshots of the main screens (pytest-textual-snapshot). Content comes from the store,
fixed, so the screens are deterministic; no model is loaded."""

from __future__ import annotations

from edgeds.app import ChatApp
from edgeds.store import Store

SIZE = (100, 32)
REPLY = """Use a list comprehension:

```python
squares = [n * n for n in range(10)]
```

It is **faster** than a loop with `append`."""


def _store(tmp_path) -> Store:
    store = Store(tmp_path / "chats.db")
    conv = store.create("Python squares", model="tiny")
    store.add(conv.id, "user", "How do I build a list of squares in Python?")
    store.add(conv.id, "assistant", REPLY, reasoning="The user wants squares.\nA comprehension is idiomatic.",
              finish_reason="stop", reasoning_s=1.25,
              stats={"prompt_tokens": 21, "reasoning_tokens": 12, "answer_tokens": 40, "ttft_s": 0.12,
                     "prompt_tok_s": 300.0, "decode_tok_s": 42.5, "finish_reason": "stop", "error": None})
    store.create("Empty chat")
    return store


def test_empty_chat(snap_compare, tmp_path):
    assert snap_compare(ChatApp(store=Store(tmp_path / "chats.db")), terminal_size=SIZE)


def test_finished_exchange(snap_compare, tmp_path):
    store = _store(tmp_path)
    conv_id = store.conversations()[-1].id

    async def open_chat(pilot):
        await pilot.app.load_conversation(conv_id)
        await pilot.pause()

    assert snap_compare(ChatApp(store=store), terminal_size=SIZE, run_before=open_chat)


def test_sidebar(snap_compare, tmp_path):
    assert snap_compare(ChatApp(store=_store(tmp_path)), terminal_size=SIZE, press=["ctrl+b"])
