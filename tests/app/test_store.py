"""The conversation store: schema upgrades, history without reasoning, export."""

from __future__ import annotations

import sqlite3

import pytest

from edgeds.errors import EdgedsError
from edgeds.store import MIGRATIONS, SCHEMA_VERSION, Store, default_path


def test_default_path_honours_edgeds_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDS_HOME", str(tmp_path / "h"))
    assert default_path() == tmp_path / "h" / "chats.db"
    store = Store()
    assert store.path.is_file() and store.version == SCHEMA_VERSION


def test_upgrade_from_first_schema_keeps_data(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    db.execute("INSERT INTO conversation (title, model, created, updated) VALUES ('old', 'm', 1, 1)")
    db.execute("INSERT INTO message (conversation_id, role, content, created) VALUES (1, 'user', 'hi', 1)")
    db.commit()
    db.close()
    store = Store(path)
    assert store.version == SCHEMA_VERSION > 1
    assert [m.content for m in store.messages(1)] == ["hi"]
    store.add(1, "assistant", "hello", reasoning="r", finish_reason="stop", reasoning_s=1.5)
    assert store.messages(1)[-1].reasoning_s == 1.5


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(EdgedsError, match="newer"):
        Store(path)


def test_history_drops_reasoning_and_unfinished_turns(tmp_path):
    store = Store(tmp_path / "c.db")
    conv = store.create("t")
    store.add(conv.id, "user", "q1")
    store.add(conv.id, "assistant", "a1", reasoning="secret thoughts", finish_reason="stop", stats={"x": 1})
    store.add(conv.id, "user", "q2")
    store.add(conv.id, "assistant", "partial", reasoning="more", finish_reason="cancelled")
    store.add(conv.id, "user", "q3")
    store.add(conv.id, "assistant", "a3", finish_reason="length")
    assert store.history(conv.id) == [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"},
    ]
    assert store.messages(conv.id)[1].reasoning == "secret thoughts"
    assert store.messages(conv.id)[1].stats == {"x": 1}


def test_rename_delete_and_order(tmp_path):
    store = Store(tmp_path / "c.db")
    a = store.create("a")
    b = store.create("b")
    store.add(a.id, "user", "later")  # touching a makes it the most recent
    assert [c.title for c in store.conversations()] == ["a", "b"]
    store.rename(b.id, "renamed")
    store.delete(a.id)
    assert [c.title for c in store.conversations()] == ["renamed"]
    assert store.messages(a.id) == []


def test_export_markdown(tmp_path):
    store = Store(tmp_path / "c.db")
    conv = store.create("Primes", model="tiny", system="be brief")
    store.add(conv.id, "user", "Is 7 prime?")
    store.add(conv.id, "assistant", "Yes.", reasoning="7 has no divisors\nbut 1 and 7", finish_reason="stop")
    text = store.export_markdown(conv.id)
    assert text == (
        "# Primes\n\nModel: `tiny`\n\n## System\n\nbe brief\n\n## User\n\nIs 7 prime?\n\n"
        "## Assistant\n\n> **Thinking**\n>\n> 7 has no divisors\n> but 1 and 7\n\nYes.\n"
    )
    assert "divisors" not in store.export_markdown(conv.id, include_reasoning=False)


def test_store_imports_no_textual():
    import subprocess
    import sys

    code = "import sys, edgeds.store; assert 'textual' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
