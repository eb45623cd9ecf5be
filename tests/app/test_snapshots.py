"""SVG snapshots of the main screens (pytest-textual-snapshot). Content comes from the store,
fixed, so the screens are deterministic; no model is loaded."""

from __future__ import annotations

import pytest

from edgeds.app import ChatApp
from edgeds.store import Store
from tests.app.support import REPLY, store_with_exchange

SIZE = (100, 32)


async def no_blink(pilot):
    """A blinking cursor would make the pictures depend on timing."""
    pilot.app.prompt.cursor_blink = False
    await pilot.pause()


def test_empty_chat(snap_compare, tmp_path):
    assert snap_compare(ChatApp(store=Store(tmp_path / "chats.db")), terminal_size=SIZE, run_before=no_blink)


@pytest.mark.parametrize("size", [SIZE, (80, 24)], ids=["100x32", "80x24"])
def test_finished_exchange(snap_compare, tmp_path, size):
    """At 80×24, the smallest usual terminal, the footer's keys all show and the header is cut to fit."""
    store = store_with_exchange(tmp_path)
    conv_id = store.conversations()[-1].id

    async def open_chat(pilot):
        await no_blink(pilot)
        await pilot.app.load_conversation(conv_id)
        await pilot.pause()

    assert snap_compare(ChatApp(store=store), terminal_size=size, run_before=open_chat)


def test_sidebar(snap_compare, tmp_path):
    assert snap_compare(ChatApp(store=store_with_exchange(tmp_path)), terminal_size=SIZE, press=["ctrl+b"])


async def test_sidebar_rename_export_delete_and_copy(tmp_path):
    """No model needed: conversations from the store, driven through keys and the dialogs."""
    store = store_with_exchange(tmp_path)
    app = ChatApp(store=store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+b", "down", "enter")  # second item: "Python squares"
        await pilot.pause()
        assert app.conversation_id is not None and store.get(app.conversation_id).title == "Python squares"
        await pilot.press("ctrl+y")
        assert app.clipboard == REPLY
        app.action_copy_code()
        assert app.clipboard == "squares = [n * n for n in range(10)]"
        await pilot.press("f2")
        await pilot.pause()
        app.screen.query_one("Input").value = "Squares"
        await pilot.press("enter")
        await pilot.pause()
        assert store.get(app.conversation_id).title == "Squares"
        await pilot.press("ctrl+e")
        await pilot.pause()
        target = tmp_path / "out.md"
        app.screen.query_one("Input").value = str(target)
        await pilot.press("enter")
        await pilot.pause()
        assert target.read_text() == store.export_markdown(app.conversation_id)
        assert target.read_text().startswith("# Squares\n")
        await app.action_delete()
        assert [c.title for c in store.conversations()] == ["Empty chat"]
        assert app.conversation_id is None

