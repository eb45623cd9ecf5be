"""The sidebar of stored conversations, and the dialogs that rename or export one of them."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import ListItem, ListView, Static

from edgeds.store import Conversation, Store

from edgeds.app.screens import TextPrompt


def export_filename(conversation_id: int, title: str) -> str:
    """The suggested Markdown file name for an exported conversation."""
    slug = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")[:40] or "chat"
    return f"edgeds-{conversation_id}-{slug}.md"


class ConversationItem(ListItem):
    """One stored conversation in the sidebar, shown by its title."""

    def __init__(self, conversation: Conversation, **kwargs):
        super().__init__(Static(conversation.title, markup=False), **kwargs)
        self.conversation = conversation


class ConversationList(ListView):
    """The sidebar: the conversations of `store`, newest first, the current one in bold."""

    def __init__(self, store: Store, **kwargs):
        super().__init__(**kwargs)
        self.store = store
        self.current: int | None = None

    def show(self, current: int | None) -> None:
        """List the stored conversations again; `current` is the one on screen."""
        self.current = current
        self.clear()
        for conv in self.store.conversations():
            self.append(ConversationItem(conv, classes="-current" if conv.id == current else ""))

    def toggle(self) -> bool:
        """Show or hide the list; shown, it takes the focus with an item highlighted."""
        self.display = not self.display
        if self.display:
            if self.index is None and len(self):
                self.index = 0
            self.focus()
        return self.display

    def rename(self, conversation_id: int | None) -> None:
        """Ask for a new title for a conversation (None: there is none to rename yet)."""
        if conversation_id is None:
            self.notify("Nothing to rename yet.", severity="warning")
            return

        def done(title: str | None) -> None:
            if title and title.strip():
                self.store.rename(conversation_id, title.strip())
                self.show(self.current)

        self.app.push_screen(TextPrompt("Rename conversation", self.store.get(conversation_id).title), done)

    def export(self, conversation_id: int | None) -> None:
        """Ask for a file name and write a conversation there as Markdown (`Store.export_markdown`)."""
        if conversation_id is None:
            self.notify("Nothing to export yet.", severity="warning")
            return

        def done(path: str | None) -> None:
            if not path:
                return
            target = Path(path).expanduser()
            try:
                target.write_text(self.store.export_markdown(conversation_id))
            except OSError as err:
                self.notify(f"{target}: {err.strerror}", severity="error")
                return
            self.notify(f"Exported to {target}")

        title = self.store.get(conversation_id).title
        self.app.push_screen(TextPrompt("Export as Markdown to", export_filename(conversation_id, title)), done)
