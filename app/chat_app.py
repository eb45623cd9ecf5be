"""ChatApp: the `edgeds chat` Textual app.

Generation runs in a thread worker that iterates `Engine.generate` and posts coalesced
`TurnDelta`s back; the UI streams them into the current AssistantMessage. Conversations live
in the SQLite `Store`; only role/content of finished turns goes back to the model.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, ListView, Static

from edgeds.errors import EdgedsError
from edgeds.events import Answer, Done, Reasoning, Stats
from edgeds.runtime.params import GenerationParams
from edgeds.store import Store

from edgeds.app.messages import ModelFailed, ModelLoaded, TurnDelta, TurnDone, TurnFailed
from edgeds.app.screens import TextPrompt
from edgeds.app.widgets import (
    AssistantMessage,
    ChatHeader,
    ConversationItem,
    ConversationList,
    PromptInput,
    UserMessage,
    code_blocks,
    with_file,
)

FLUSH_S = 0.1  # the worker posts at most ~10 deltas a second
KEYMAP_FILE = "keymap.toml"
MAX_ATTACHMENT_CHARS = 200_000


def quant_name(metadata: dict[str, str]) -> str:
    """The GGUF's file type as llama.cpp names quants (Q4_K_M, F16, …)."""
    import gguf

    try:
        name = gguf.LlamaFileType(int(metadata["general.file_type"])).name
    except (KeyError, ValueError):
        return "?"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def placement_line(engine) -> str:
    """Where the weights sit, in a few words (from the load options the engine used)."""
    options = engine.model.options
    n_layer = engine.model.n_layer
    from edgeds.llamacpp.binding import gpu_offload_supported

    if options.n_gpu_layers == 0 or not gpu_offload_supported():
        return "CPU"
    gpu = n_layer if options.n_gpu_layers < 0 else min(options.n_gpu_layers, n_layer)
    line = f"GPU {gpu}/{n_layer} layers"
    if options.overrides:
        line += f", {len(options.overrides)} tensor group(s) on CPU"
    return line


def open_model(spec: str, *, n_ctx: int | None = None, moe_offload: str = "auto"):
    """A GGUF path or a downloaded registry id -> Engine (no downloads from inside the TUI)."""
    from edgeds.machine.hardware import threads_beside_ui
    from edgeds.loader import open_engine

    return open_engine(spec, n_ctx=n_ctx, n_threads=threads_beside_ui(), moe_offload=moe_offload,
                       pull=False, progress=False)


def load_keymap(path: Path) -> dict[str, str]:
    """`[keymap]` of a TOML file: binding id -> keys (e.g. "chat.cancel" = "ctrl+c")."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise EdgedsError(f"{path}: cannot read the keymap ({err})") from None
    keymap = data.get("keymap", {})
    if not isinstance(keymap, dict) or not all(isinstance(v, str) for v in keymap.values()):
        raise EdgedsError(f"{path}: [keymap] must map binding ids to key strings")
    return keymap


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
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="chat.cancel"),
        Binding("ctrl+n", "new_chat", "New chat", id="chat.new"),
        Binding("ctrl+t", "toggle_reasoning", "Thinking", id="chat.toggle_reasoning"),
        Binding("ctrl+b", "toggle_sidebar", "Chats", id="chat.sidebar"),
        Binding("ctrl+o", "attach", "Attach", id="chat.attach"),
        Binding("ctrl+y", "copy_reply", "Copy", id="chat.copy_reply"),
        Binding("ctrl+l", "switch_model", "Model", id="chat.model", show=False),
        Binding("f2", "rename", "Rename", id="chat.rename", show=False),
        Binding("ctrl+e", "export", "Export", id="chat.export", show=False),
    ]

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
        self.engine = engine
        self._owns_engine = False
        self.n_ctx = n_ctx
        self.moe_offload = moe_offload
        self.system = system
        self.params = params or GenerationParams()
        self.store = store or Store()
        self._keymap = keymap or {}
        self._open_model = open_model
        self.conversation_id: int | None = None
        self.attachment: tuple[str, str] | None = None
        self.generating = False
        self.last_request: list[dict] = []  # the messages the engine got for the latest reply
        self.last_stats: Stats | None = None
        self.context_used = 0
        self.show_reasoning = True
        self._turn: AssistantMessage | None = None
        self._turn_prompt: tuple[str, tuple[str, str] | None] | None = None

    # -- layout

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield ConversationList(id="sidebar")
            with Vertical(id="main"):
                yield ChatHeader(id="header")
                yield VerticalScroll(id="conversation")
                yield Static("", id="attachment", markup=False)
                yield PromptInput(id="prompt", soft_wrap=True, show_line_numbers=False, compact=True)
        yield Footer()

    def on_mount(self) -> None:
        from edgeds.paths import config_dir

        # The decode worker holds the GIL for a moment per token; with the default 5 ms switch
        # interval it waited behind the UI's renders (0.95 of bare Engine speed; 1.0 at 0.5 ms).
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)

        try:
            keymap = {**load_keymap(config_dir() / KEYMAP_FILE), **self._keymap}
        except EdgedsError as err:
            self.notify(str(err), severity="error")
            keymap = self._keymap
        if keymap:
            self.set_keymap(keymap)
        self.query_one("#sidebar").display = False
        self.query_one("#attachment").display = False
        self.query_one(PromptInput).focus()
        self._refresh_sidebar()
        self._refresh_header()
        if self.engine is None and self.model_spec:
            self._refresh_header(f"loading {self.model_spec} …")
            self._load(self.model_spec)

    def on_unmount(self) -> None:
        sys.setswitchinterval(self._switch_interval)
        if self.engine is not None:
            self.engine.cancel()
        if self._owns_engine and self.engine is not None and not self.generating:
            self.engine.close()

    @property
    def conversation(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    def _refresh_header(self, note: str | None = None) -> None:
        if note is not None or self.engine is None:
            text = note or "no model loaded · Ctrl+L or Ctrl+P → Switch model"
        else:
            used = self.context_used
            pct = 100 * used / self.engine.n_ctx if self.engine.n_ctx else 0
            text = (f"{self.engine.name} · {quant_name(self.engine.model.metadata)} · "
                    f"{placement_line(self.engine)} · ctx {used}/{self.engine.n_ctx} ({pct:.0f}%)")
        self.query_one(ChatHeader).update(text)

    def _refresh_sidebar(self) -> None:
        self.query_one(ConversationList).show(self.store.conversations(), self.conversation_id)

    # -- sending and streaming

    @on(PromptInput.Submitted)
    async def send(self, event: PromptInput.Submitted) -> None:
        if self.generating:
            self.notify("Still answering; Esc cancels.", severity="warning")
            return
        if self.engine is None:
            self.notify("No model loaded yet.", severity="error")
            return
        text = event.text
        content = with_file(*self.attachment, text) if self.attachment else text
        if self.conversation_id is None:
            title = text.strip().splitlines()[0][:60] if text.strip() else "New chat"
            self.conversation_id = self.store.create(title, model=self.engine.name, system=self.system).id
        conv = self.store.get(self.conversation_id)
        history = self.store.history(conv.id)
        self.store.add(conv.id, "user", content, model=self.engine.name)
        messages = ([{"role": "system", "content": conv.system}] if conv.system else []) + history
        messages.append({"role": "user", "content": content})
        self.last_request = messages
        self._turn_prompt = (text, self.attachment)
        self._set_attachment(None)
        self.prompt.clear()
        self._turn = AssistantMessage()
        await self.conversation.mount_all([UserMessage(content, classes="user"), self._turn])
        self.conversation.anchor()
        self.generating = True
        self._refresh_sidebar()
        self._generate(self.engine, messages, self.params)

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def _generate(self, engine, messages: list[dict], params: GenerationParams) -> None:
        reasoning: list[str] = []
        answer: list[str] = []
        pieces = 0
        last = 0.0  # the first delta goes out at once; later ones at most every FLUSH_S

        def flush() -> None:
            nonlocal pieces, last
            if reasoning or answer:
                self.post_message(TurnDelta("".join(reasoning), "".join(answer), pieces))
                reasoning.clear()
                answer.clear()
                pieces = 0
            last = time.monotonic()

        try:
            for event in engine.generate(messages, params):
                if isinstance(event, Reasoning):
                    reasoning.append(event.text)
                    pieces += 1
                elif isinstance(event, Answer):
                    answer.append(event.text)
                elif isinstance(event, Done):
                    flush()
                    self.post_message(TurnDone(event.stats))
                    return
                if time.monotonic() - last >= FLUSH_S:
                    flush()
        except EdgedsError as err:
            flush()
            self.post_message(TurnFailed(str(err)))
        except Exception as err:  # noqa: BLE001 - the app must outlive any engine failure
            flush()
            self.post_message(TurnFailed(f"{type(err).__name__}: {err}"))

    async def on_turn_delta(self, message: TurnDelta) -> None:
        if self._turn is not None:
            await self._turn.add(message.reasoning, message.answer, message.reasoning_pieces)

    async def on_turn_done(self, message: TurnDone) -> None:
        stats = message.stats
        self.last_stats = stats
        self.context_used = stats.prompt_tokens + stats.completion_tokens
        await self._end_turn(stats, stats.finish_reason)
        self._refresh_header()
        if stats.finish_reason == "error":
            self.notify(stats.error or "generation failed", severity="error")
        elif stats.finish_reason == "length":
            self.notify("The reply hit the token limit or the context is full.", severity="warning")

    async def on_turn_failed(self, message: TurnFailed) -> None:
        await self._end_turn(None, "error")
        self.notify(message.error, title="Generation failed", severity="error", timeout=8)

    async def _end_turn(self, stats: Stats | None, finish_reason: str) -> None:
        turn = self._turn
        if turn is None:
            self.generating = False
            return
        await turn.finish(stats, finish_reason)
        if self.conversation_id is not None:
            self.store.add(
                self.conversation_id, "assistant", turn.answer, reasoning=turn.reasoning,
                finish_reason=finish_reason, stats=asdict(stats) if stats else None,
                reasoning_s=turn.reasoning_s,
            )
        if finish_reason in ("cancelled", "error") and self._turn_prompt is not None:
            text, attachment = self._turn_prompt
            if not self.prompt.text:
                self.prompt.load_text(text)
                self.prompt.move_cursor(self.prompt.document.end)
            self._set_attachment(attachment)
        self._turn_prompt = None
        self._turn = None
        self.generating = False  # last: tests and the UI treat this as "the turn is settled"

    def action_cancel(self) -> None:
        if self.generating and self.engine is not None:
            self.engine.cancel()

    # -- conversations

    async def load_conversation(self, conversation_id: int | None) -> None:
        if self.generating:
            self.notify("Cancel the running reply first (Esc).", severity="warning")
            return
        self.conversation_id = conversation_id
        view = self.conversation
        await view.remove_children()
        widgets = []
        if conversation_id is not None:
            for msg in self.store.messages(conversation_id):
                if msg.role == "user":
                    widgets.append(UserMessage(msg.content, classes="user"))
                else:
                    stats = Stats(**msg.stats) if msg.stats else None
                    widgets.append(AssistantMessage(answer=msg.content, reasoning=msg.reasoning,
                                                    reasoning_s=msg.reasoning_s, stats=stats,
                                                    finish_reason=msg.finish_reason or "stop"))
            await view.mount_all(widgets)
            view.anchor()
        self.context_used = 0
        if self.engine is not None and conversation_id is not None:
            try:
                self.context_used = len(self.engine.prompt_tokens(self.store.history(conversation_id))[0])
            except EdgedsError:
                pass
        self._refresh_header()
        self._refresh_sidebar()

    async def action_new_chat(self) -> None:
        await self.load_conversation(None)
        self.prompt.focus()

    @on(ListView.Selected, "#sidebar")
    async def _pick_conversation(self, event: ListView.Selected) -> None:
        if isinstance(event.item, ConversationItem):
            await self.load_conversation(event.item.conversation.id)

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(ConversationList)
        sidebar.display = not sidebar.display
        if sidebar.display:
            if sidebar.index is None and len(sidebar):
                sidebar.index = 0
            sidebar.focus()
        else:
            self.prompt.focus()

    def action_rename(self) -> None:
        if self.conversation_id is None:
            self.notify("Nothing to rename yet.", severity="warning")
            return
        conv_id = self.conversation_id

        def done(title: str | None) -> None:
            if title and title.strip():
                self.store.rename(conv_id, title.strip())
                self._refresh_sidebar()

        self.push_screen(TextPrompt("Rename conversation", self.store.get(conv_id).title), done)

    async def action_delete(self) -> None:
        if self.conversation_id is None:
            return
        self.store.delete(self.conversation_id)
        await self.load_conversation(None)
        self.notify("Conversation deleted")

    def action_export(self) -> None:
        if self.conversation_id is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        conv_id = self.conversation_id
        title = self.store.get(conv_id).title
        slug = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")[:40] or "chat"

        def done(path: str | None) -> None:
            if not path:
                return
            target = Path(path).expanduser()
            try:
                target.write_text(self.store.export_markdown(conv_id))
            except OSError as err:
                self.notify(f"{target}: {err.strerror}", severity="error")
                return
            self.notify(f"Exported to {target}")

        self.push_screen(TextPrompt("Export as Markdown to", f"edgeds-{conv_id}-{slug}.md"), done)

    # -- reasoning visibility, copy, attach

    def action_toggle_reasoning(self) -> None:
        self.show_reasoning = not self.show_reasoning
        self.conversation.set_class(not self.show_reasoning, "-hide-reasoning")

    def _last_reply(self) -> AssistantMessage | None:
        replies = self.conversation.query(AssistantMessage)
        return replies.last() if replies else None

    def action_copy_reply(self) -> None:
        reply = self._last_reply()
        if reply is None or not reply.answer:
            self.notify("No reply to copy.", severity="warning")
            return
        self.copy_to_clipboard(reply.answer)
        self.notify("Reply copied")

    def action_copy_code(self) -> None:
        reply = self._last_reply()
        blocks = code_blocks(reply.answer) if reply is not None else []
        if not blocks:
            self.notify("The last reply has no code block.", severity="warning")
            return
        self.copy_to_clipboard(blocks[-1])
        self.notify("Code block copied")

    def _set_attachment(self, attachment: tuple[str, str] | None) -> None:
        self.attachment = attachment
        label = self.query_one("#attachment", Static)
        label.display = attachment is not None
        if attachment is not None:
            label.update(f"📎 {attachment[0]} ({len(attachment[1])} chars) · Ctrl+P → Remove attachment")

    def attach_file(self, path: str | Path) -> bool:
        """Attach a text file to the next prompt (DeepSeek's file template); notify on failure."""
        path = Path(path).expanduser()
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            self.notify(f"{path}: not a UTF-8 text file", severity="error")
            return False
        except OSError as err:
            self.notify(f"{path}: {err.strerror}", severity="error")
            return False
        if len(content) > MAX_ATTACHMENT_CHARS:
            self.notify(f"{path}: {len(content)} characters is too long to attach", severity="error")
            return False
        self._set_attachment((path.name, content.rstrip("\n")))
        return True

    def action_attach(self) -> None:
        self.push_screen(TextPrompt("Attach a text file", ""), lambda p: p and self.attach_file(p))

    def action_remove_attachment(self) -> None:
        self._set_attachment(None)

    # -- models

    def action_switch_model(self) -> None:
        if self.generating:
            self.notify("Cancel the running reply first (Esc).", severity="warning")
            return
        from edgeds.catalog.registry import load_registry

        try:
            suggestions = [entry.id for entry in load_registry()]
        except EdgedsError:
            suggestions = []
        self.push_screen(
            TextPrompt("Model: a GGUF path or a registry id", self.model_spec or "", suggestions=suggestions),
            lambda spec: spec and self.switch_model(spec),
        )

    def switch_model(self, spec: str) -> None:
        self._refresh_header(f"loading {spec} …")
        self._load(spec)

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load(self, spec: str) -> None:
        opener = self._open_model or open_model
        try:
            engine = opener(spec, n_ctx=self.n_ctx, moe_offload=self.moe_offload)
        except EdgedsError as err:
            self.post_message(ModelFailed(spec, str(err)))
        except Exception as err:  # noqa: BLE001
            self.post_message(ModelFailed(spec, f"{type(err).__name__}: {err}"))
        else:
            self.post_message(ModelLoaded(engine, spec))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        old, self.engine = self.engine, message.engine
        if old is not None and self._owns_engine:
            old.close()
        self._owns_engine = True
        self.model_spec = message.spec
        self.context_used = 0
        self._refresh_header()
        self.notify(f"Loaded {self.engine.name}" + (f": {self.engine.placement}" if self.engine.placement else ""))

    def on_model_failed(self, message: ModelFailed) -> None:
        self._refresh_header()
        self.notify(message.error, title="Model failed to load", severity="error", timeout=10)

    # -- command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        commands = [
            ("New chat", "Start a new conversation", self.action_new_chat),
            ("Switch model", "Load another GGUF file or registry model", self.action_switch_model),
            ("Toggle thinking", "Show or hide every reasoning section", self.action_toggle_reasoning),
            ("Toggle chat list", "Show or hide the conversation sidebar", self.action_toggle_sidebar),
            ("Rename chat", "Rename this conversation", self.action_rename),
            ("Delete chat", "Delete this conversation", self.action_delete),
            ("Export chat", "Save this conversation as Markdown", self.action_export),
            ("Copy reply", "Copy the last reply", self.action_copy_reply),
            ("Copy code block", "Copy the last code block of the last reply", self.action_copy_code),
            ("Attach file", "Attach a text file to the next prompt", self.action_attach),
            ("Remove attachment", "Drop the attached file", self.action_remove_attachment),
            ("Cancel reply", "Stop the running generation", self.action_cancel),
        ]
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)
