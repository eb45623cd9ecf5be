"""Conversations kept in SQLite: chats, their messages, reasoning stored for viewing only.

One database file, `chats.db`, in $EDGEDS_HOME when set, else the platform's user data dir.
The schema version lives in `PRAGMA user_version`; `MIGRATIONS` is an append-only list of
upgrade steps, and opening a database runs the steps it has not seen yet, each in its own
transaction. Never edit a step that has shipped: add a new one.

Reasoning is stored so the UI can show it again, but `Store.history` returns only
role/content pairs of finished turns, so no reasoning (and no cancelled or failed turn)
goes back to the model. No UI code here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edgeds.errors import EdgedsError
from edgeds.paths import data_dir

DB_NAME = "chats.db"

# Append-only: step i upgrades a database from user_version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE conversation (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        model TEXT NOT NULL DEFAULT '',
        system TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE message (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversation(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content TEXT NOT NULL,
        reasoning TEXT NOT NULL DEFAULT '',
        finish_reason TEXT,
        stats TEXT,
        created REAL NOT NULL
    );
    CREATE INDEX message_by_conversation ON message(conversation_id, id);
    """,
    """
    ALTER TABLE message ADD COLUMN reasoning_s REAL;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
# What the queries below read: a database whose user_version claims the schema but lacks a table
# or column fails here, when it is opened, with one line naming the file.
SCHEMA_CHECK = (
    "SELECT id, title, model, system, created, updated FROM conversation LIMIT 0",
    "SELECT id, conversation_id, role, content, reasoning, finish_reason, stats, reasoning_s, created"
    " FROM message LIMIT 0",
)


def default_path() -> Path:
    return data_dir() / DB_NAME


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model: str
    system: str | None
    created: float
    updated: float


@dataclass(frozen=True)
class StoredMessage:
    """One message. For assistant turns, finish_reason is stop/length/cancelled/error and stats
    the Done stats as a dict; reasoning_s is how long the model thought."""

    id: int
    role: str
    content: str
    reasoning: str = ""
    finish_reason: str | None = None
    stats: dict | None = None
    reasoning_s: float | None = None


class Store:
    """The conversation database. `Store()` opens (and upgrades) the default file."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.db.execute("PRAGMA foreign_keys = ON")
            self.upgrade()
            for query in SCHEMA_CHECK:
                self.db.execute(query)
        except sqlite3.DatabaseError as err:
            raise EdgedsError(f"{self.path}: cannot open the chat database ({err})") from None

    @property
    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def upgrade(self) -> None:
        """Run the migration steps this database has not seen."""
        version = self.version
        if version > SCHEMA_VERSION:
            raise EdgedsError(
                f"{self.path}: chat database schema {version} is newer than this edgeds "
                f"understands ({SCHEMA_VERSION}); upgrade edgeds"
            )
        for step in range(version, SCHEMA_VERSION):
            # executescript commits first; BEGIN makes each step all-or-nothing
            self.db.executescript(f"BEGIN; {MIGRATIONS[step]}; PRAGMA user_version = {step + 1}; COMMIT;")

    def close(self) -> None:
        self.db.close()

    # -- conversations

    def create(self, title: str, model: str = "", system: str | None = None) -> Conversation:
        now = time.time()
        with self.db:
            cur = self.db.execute(
                "INSERT INTO conversation (title, model, system, created, updated) VALUES (?, ?, ?, ?, ?)",
                (title, model, system, now, now),
            )
        return self.get(cur.lastrowid)

    def get(self, conversation_id: int) -> Conversation:
        row = self.db.execute(
            "SELECT id, title, model, system, created, updated FROM conversation WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        if row is None:
            raise EdgedsError(f"no conversation {conversation_id} in {self.path}")
        return Conversation(*row)

    def conversations(self) -> list[Conversation]:
        """All conversations, most recently updated first."""
        rows = self.db.execute(
            "SELECT id, title, model, system, created, updated FROM conversation ORDER BY updated DESC, id DESC"
        )
        return [Conversation(*row) for row in rows]

    def rename(self, conversation_id: int, title: str) -> None:
        with self.db:
            self.db.execute("UPDATE conversation SET title = ? WHERE id = ?", (title, conversation_id))

    def delete(self, conversation_id: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM conversation WHERE id = ?", (conversation_id,))

    # -- messages

    def add(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        reasoning: str = "",
        finish_reason: str | None = None,
        stats: dict | None = None,
        reasoning_s: float | None = None,
        model: str | None = None,
    ) -> StoredMessage:
        now = time.time()
        with self.db:
            cur = self.db.execute(
                "INSERT INTO message (conversation_id, role, content, reasoning, finish_reason, stats, reasoning_s, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, role, content, reasoning, finish_reason,
                 json.dumps(stats) if stats is not None else None, reasoning_s, now),
            )
            if model:
                self.db.execute("UPDATE conversation SET updated = ?, model = ? WHERE id = ?", (now, model, conversation_id))
            else:
                self.db.execute("UPDATE conversation SET updated = ? WHERE id = ?", (now, conversation_id))
        return StoredMessage(cur.lastrowid, role, content, reasoning, finish_reason, stats, reasoning_s)

    def delete_message(self, message_id: int) -> None:
        """Forget one message (the chat app drops the user turn of a reply the user cancelled)."""
        with self.db:
            self.db.execute("DELETE FROM message WHERE id = ?", (message_id,))

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        rows = self.db.execute(
            "SELECT id, role, content, reasoning, finish_reason, stats, reasoning_s FROM message"
            " WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        )
        return [
            StoredMessage(mid, role, content, reasoning, finish, self._stats(mid, stats), rs)
            for mid, role, content, reasoning, finish, stats, rs in rows
        ]

    def _stats(self, message_id: int, text: str | None) -> dict | None:
        """A message's stored stats: a JSON object, or None."""
        if not text:
            return None
        try:
            stats = json.loads(text)
        except (ValueError, TypeError, RecursionError):
            stats = None
        if not isinstance(stats, dict):
            raise EdgedsError(f"{self.path}: message {message_id} has corrupt stats (not a JSON object)")
        return stats

    def history(self, conversation_id: int) -> list[dict]:
        """What goes back to the model: role/content of finished turns; no reasoning, and a user
        message whose reply was cancelled or failed is left out together with that reply."""
        out: list[dict] = []
        pending_user: dict | None = None
        for msg in self.messages(conversation_id):
            if msg.role == "user":
                pending_user = {"role": "user", "content": msg.content}
            elif pending_user is not None and msg.finish_reason in ("stop", "length"):
                out += [pending_user, {"role": "assistant", "content": msg.content}]
                pending_user = None
            else:
                pending_user = None
        return out

    def export_markdown(self, conversation_id: int, *, include_reasoning: bool = True) -> str:
        """The conversation as a Markdown document; reasoning as a quoted block."""
        conv = self.get(conversation_id)
        lines = [f"# {conv.title}", ""]
        if conv.model:
            lines += [f"Model: `{conv.model}`", ""]
        if conv.system:
            lines += ["## System", "", conv.system, ""]
        for msg in self.messages(conversation_id):
            if msg.role == "user":
                lines += ["## User", "", msg.content, ""]
                continue
            lines += ["## Assistant", ""]
            if include_reasoning and msg.reasoning.strip():
                lines += ["> **Thinking**", ">"]
                lines += [f"> {line}".rstrip() for line in msg.reasoning.strip().splitlines()]
                lines += [""]
            lines += [msg.content, ""]
            if msg.finish_reason in ("cancelled", "error"):
                lines += [f"*({msg.finish_reason})*", ""]
        return "\n".join(lines).rstrip() + "\n"
