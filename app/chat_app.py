"""ChatApp: the `edgeds chat` Textual app.

The app holds what outlives one conversation: the loaded model (loaded in a thread worker,
`workers.load_model`), the conversation list, the key bindings and the command palette.
The conversation on screen is a `ChatView` (`chat.py`); conversations live in the SQLite
`Store`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, ListView

from edgeds.errors import EdgedsError
from edgeds.runtime.params import GenerationParams
from edgeds.store import Store

from edgeds.app import workers
from edgeds.app.chat import ChatView
from edgeds.app.commands import COMMANDS
from edgeds.app.conversations import ConversationItem, ConversationList
from edgeds.app.header import model_label
from edgeds.app.keymap import keymap_path, load_keymap
from edgeds.app.messages import ModelFailed, ModelLoaded
from edgeds.app.model_choices import model_choices, remember_model
from edgeds.app.screens import FilePicker, ModelPicker


def _chat_attribute(name: str) -> property:
    """A read-only app attribute that is the chat view's attribute of the same name."""
    return property(lambda app: getattr(app.chat, name), doc=f"The chat view's `{name}`.")


class ChatApp(App):
    """Chat with a local model; reasoning streams into a collapsible Thinking section.

    Args:
        model: a GGUF path or registry id, loaded in the background on start.
        engine: an already loaded Engine (the app does not close it).
        n_ctx: context length for models this app loads.
        moe_offload: expert placement for models this app loads (auto|all|none|N).
        system: a system prompt for new conversations.
        params: generation parameters for every reply (grammar, seed, max_tokens, …).
        store: the conversation database; default: `Store()` in the data dir.
        keymap: binding id -> keys, on top of the keymap file in the config dir.
        open_model: how a spec becomes an Engine; default `edgeds.loader.open_engine`.
    """

    CSS_PATH = Path(__file__).with_name("edgeds.tcss")  # absolute: subclasses live elsewhere
    TITLE = "edgeds chat"
    # Footer labels are short, and few, so that the footer fits 80 columns. Copy and export are priority
    # bindings: the prompt box (a TextArea) would take Ctrl+Y (redo) and Ctrl+E (end of line).
    BINDINGS = [
        Binding("escape", "cancel", "Stop", id="chat.cancel"),
        Binding("ctrl+t", "toggle_thinking", "Think", id="chat.toggle_reasoning"),
        Binding("ctrl+n", "new_chat", "New chat", id="chat.new", show=False),
        Binding("ctrl+b", "toggle_sidebar", "Chats", id="chat.sidebar"),
        Binding("ctrl+l", "switch_model", "Model", id="chat.model"),
        Binding("ctrl+o", "attach", "Attach", id="chat.attach"),
        Binding("ctrl+y", "copy_reply", "Copy", id="chat.copy_reply", priority=True),
        Binding("f2", "rename", "Rename", id="chat.rename", show=False),
        Binding("ctrl+e", "export", "Export", id="chat.export", show=False, priority=True),
    ]

    # The conversation on screen, read through the app (callers and tests use these names).
    engine = _chat_attribute("engine")
    generating = _chat_attribute("generating")
    last_request = _chat_attribute("last_request")
    last_stats = _chat_attribute("last_stats")
    conversation_id = _chat_attribute("conversation_id")
    attachment = _chat_attribute("attachment")
    show_reasoning = _chat_attribute("show_reasoning")
    conversation = _chat_attribute("conversation")
    prompt = _chat_attribute("prompt")

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        engine=None,
        n_ctx: int | None = None,
        moe_offload: str = "auto",
        system: str | None = None,
        params: GenerationParams | None = None,
        store: Store | None = None,
        keymap: dict[str, str] | None = None,
        open_model: Callable | None = None,
    ):
        super().__init__()
        self.model_spec = str(model) if model is not None else None
        self.n_ctx = n_ctx
        self.moe_offload = moe_offload
        self.store = store or Store()
        self._keymap = keymap or {}
        self._open_model = open_model or workers.open_model
        self._owns_engine = False  # engines the app loaded itself are closed by it
        # Built here and mounted by compose, so the attributes read through to it work at once.
        self.chat = ChatView(engine, store=self.store, params=params or GenerationParams(),
                             system=system, id="chat")

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield ConversationList(self.store, id="sidebar")
            yield self.chat
        yield Footer(compact=True)

    def on_mount(self) -> None:
        try:
            keymap = {**load_keymap(keymap_path()), **self._keymap}
        except EdgedsError as err:
            self.notify(str(err), severity="error")
            keymap = self._keymap
        if keymap:
            self.set_keymap(keymap)
        self.chat.prompt.focus()
        self._refresh_sidebar()
        self.chat.refresh_header()
        if self.engine is None and self.model_spec:
            self.switch_model(self.model_spec)

    def on_unmount(self) -> None:
        if self.engine is not None:
            self.engine.cancel()
        if self._owns_engine and self.engine is not None and not self.generating:
            self.engine.close()

    def attach_file(self, path: str | Path) -> bool:
        """Attach a text file to the next prompt (DeepSeek's file template); notify on failure."""
        return self.chat.attach_file(path)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """While a dialog is open, its text box keeps the priority keys (Ctrl+E: end of line)."""
        priority = {binding.action for binding in self.BINDINGS if binding.priority}
        return not (action in priority and isinstance(self.screen, ModalScreen))

    def _refuse_while_generating(self) -> bool:
        """True, with a warning, while a reply is streaming."""
        if self.generating:
            self.notify("Cancel the running reply first (Esc).", severity="warning")
        return self.generating

    # -- conversations

    @property
    def sidebar(self) -> ConversationList:
        return self.query_one(ConversationList)

    def _refresh_sidebar(self) -> None:
        self.sidebar.show(self.conversation_id)

    def on_chat_view_changed(self, _: ChatView.Changed) -> None:
        self._refresh_sidebar()

    async def load_conversation(self, conversation_id: int | None) -> None:
        """Show a stored conversation (None: a new one), unless a reply is streaming."""
        if self._refuse_while_generating():
            return
        await self.chat.show_conversation(conversation_id)
        self._refresh_sidebar()

    async def action_new_chat(self) -> None:
        await self.load_conversation(None)
        self.prompt.focus()

    @on(ListView.Selected, "#sidebar")
    async def _pick_conversation(self, event: ListView.Selected) -> None:
        if isinstance(event.item, ConversationItem):
            await self.load_conversation(event.item.conversation.id)

    def action_toggle_sidebar(self) -> None:
        if not self.sidebar.toggle():
            self.prompt.focus()

    def action_rename(self) -> None:
        self.sidebar.rename(self.conversation_id)

    async def action_delete(self) -> None:
        if self.conversation_id is None:
            return
        self.store.delete(self.conversation_id)
        await self.load_conversation(None)
        self.notify("Conversation deleted")

    def action_export(self) -> None:
        self.sidebar.export(self.conversation_id)

    # -- the conversation on screen

    def action_cancel(self) -> None:
        self.chat.cancel()

    def action_toggle_thinking(self) -> None:
        self.chat.toggle_thinking()

    def action_toggle_all_reasoning(self) -> None:
        self.chat.toggle_all_reasoning()

    def action_copy_reply(self) -> None:
        self.chat.copy_reply()

    def action_copy_code(self) -> None:
        self.chat.copy_code()

    def action_attach(self) -> None:
        self.push_screen(FilePicker("Attach a text file", Path.cwd()), lambda p: p and self.attach_file(p))

    def action_remove_attachment(self) -> None:
        self.chat.remove_attachment()

    # -- models

    def action_switch_model(self) -> None:
        if self._refuse_while_generating():
            return
        self.push_screen(ModelPicker(self.model_spec or "", model_choices()),
                         lambda spec: spec and self.switch_model(spec))

    def switch_model(self, spec: str) -> None:
        """Load `spec` (a GGUF path or registry id) in the background; it replaces the current model."""
        self.chat.refresh_header(f"loading {model_label(spec)} …")
        self._load(spec)

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load(self, spec: str) -> None:
        self.post_message(workers.load_model(self._open_model, spec, n_ctx=self.n_ctx, moe_offload=self.moe_offload))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        engine = message.engine
        if self.engine is not None and self._owns_engine:
            self.engine.close()
        self.chat.use_engine(engine, model_label(message.spec))
        self._owns_engine = True
        self.model_spec = message.spec
        remember_model(message.spec)
        self.notify(f"Loaded {model_label(message.spec)}" + (f": {engine.placement}" if engine.placement else ""))

    def on_model_failed(self, message: ModelFailed) -> None:
        self.chat.refresh_header()
        self.notify(message.error, title="Model failed to load", severity="error", timeout=10)

    # -- command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for title, help_text, action in COMMANDS:
            yield SystemCommand(title, help_text, getattr(self, f"action_{action}"))
