"""ChatView: one conversation on screen, with its header, messages, attachment line and prompt.

Sending stores the user turn and starts a thread worker (`workers.stream_reply`) that iterates
`Engine.generate` and posts coalesced `TurnDelta`s back; they stream into the running
AssistantMessage. Conversations live in the SQLite `Store`; only role/content of finished
turns goes back to the model. A reply that is cancelled (Esc) or fails takes its user turn
with it, from the screen and the store, and the prompt comes back for editing: what is on
screen is what the model is sent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from textual import on, work
from textual.worker import get_current_worker
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from edgeds.errors import EdgedsError
from edgeds.events import Stats
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.request import with_system
from edgeds.store import Store

from edgeds.app.attachments import read_attachment, with_file
from edgeds.app.header import ChatHeader
from edgeds.app.messages import TurnDelta, TurnDone, TurnFailed, TurnStarted
from edgeds.app.widgets import AssistantMessage, PromptInput, UserMessage, code_blocks, stored_message, thinking_stop
from edgeds.app.workers import stream_reply


@dataclass(frozen=True)
class SentTurn:
    """What sending a prompt did, so that a cancelled or failed reply can undo it."""

    text: str  # the prompt as typed
    attachment: tuple[str, str] | None
    widget: UserMessage
    message_id: int  # the stored user message
    context_before: int  # context use before the prompt


class ChatView(Vertical):
    """A conversation with the loaded model: sends prompts and streams the replies in.

    Args:
        engine: the Engine that answers (None until a model is loaded; see `use_engine`).
        store: where the conversation is kept.
        params: generation parameters for every reply.
        system: a system prompt for new conversations.
    """

    class Changed(Message):
        """The list of chats changed: a turn went into a new conversation, or a cancelled
        first turn took its conversation away again."""

    def __init__(self, engine=None, *, store: Store, params: GenerationParams,
                 system: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.engine = engine
        self.model_label: str | None = None  # how the user named the model (default: its file name)
        self.store = store
        self.params = params
        self.system = system
        self.conversation_id: int | None = None
        self.attachment: tuple[str, str] | None = None  # (file name, text) for the next prompt
        self.generating = False
        self.last_request: list[dict] = []  # the messages the engine got for the latest reply
        self.last_stats: Stats | None = None
        self.context_used = 0
        self.show_reasoning = True
        self.turn: AssistantMessage | None = None  # the reply being streamed
        self._sent: SentTurn | None = None  # the user turn of the reply being streamed

    def compose(self) -> ComposeResult:
        yield ChatHeader(id="header")
        yield VerticalScroll(id="conversation")
        yield Static("", id="attachment", markup=False)
        yield PromptInput(id="prompt", soft_wrap=True, show_line_numbers=False, compact=True,
                          placeholder="Message · Enter sends · Shift+Enter adds a line")

    @property
    def conversation(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    def refresh_header(self, note: str | None = None) -> None:
        """Show the model and context use in the header, or `note` (e.g. while a model loads)."""
        self.query_one(ChatHeader).show(self.engine, self.context_used, label=self.model_label, note=note)

    def use_engine(self, engine, label: str | None = None) -> None:
        """Answer with `engine`, shown as `label`, from now on (the caller owns and closes the old one)."""
        self.engine = engine
        self.model_label = label
        self.context_used = 0
        self.refresh_header()

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
        model = self.model_label or self.engine.model.path.name
        if self.conversation_id is None:
            title = text.strip().splitlines()[0][:60] if text.strip() else "New chat"
            self.conversation_id = self.store.create(title, model=model, system=self.system).id
        conv = self.store.get(self.conversation_id)
        history = self.store.history(conv.id)
        stored = self.store.add(conv.id, "user", content, model=model)
        messages = with_system(history, conv.system)
        messages.append({"role": "user", "content": content})
        self.last_request = messages
        user = UserMessage(content, classes="user")
        self._sent = SentTurn(text, self.attachment, user, stored.id, self.context_used)
        self._set_attachment(None)
        self.prompt.clear()
        self.turn = AssistantMessage()
        await self.conversation.mount_all([user, self.turn])
        self.conversation.anchor()
        self.generating = True
        self.post_message(self.Changed())
        self._generate(self.engine, messages, self.params)

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def _generate(self, engine, messages: list[dict], params: GenerationParams) -> None:
        worker = get_current_worker()
        stream_reply(engine, messages, params, self.post_message, cancelled=lambda: worker.is_cancelled)

    def on_turn_started(self, message: TurnStarted) -> None:
        self.context_used = message.prompt_tokens
        self.refresh_header()

    async def on_turn_delta(self, message: TurnDelta) -> None:
        if self.turn is not None:
            await self.turn.add(message.reasoning, message.answer, message.reasoning_pieces)
            self.context_used += message.pieces  # about one piece per token; TurnDone has the count
            self.refresh_header()

    async def on_turn_done(self, message: TurnDone) -> None:
        stats = message.stats
        self.last_stats = stats
        self.context_used = stats.prompt_tokens + stats.completion_tokens
        stop = thinking_stop(stats, stats.finish_reason, self.turn.reasoning, self.turn.answer) if self.turn else None
        await self._end_turn(stats, stats.finish_reason)
        self.refresh_header()
        if stats.finish_reason == "error":
            self.notify(stats.error or "generation failed", severity="error")
        elif stats.finish_reason == "length":
            self.notify(f"{stop.capitalize()}." if stop else "The reply hit the token limit or the context is full.",
                        severity="warning")

    async def on_turn_failed(self, message: TurnFailed) -> None:
        await self._end_turn(None, "error")
        self.notify(message.error, title="Generation failed", severity="error", timeout=8)

    async def _end_turn(self, stats: Stats | None, finish_reason: str) -> None:
        """Settle and store the reply; a cancelled or failed one goes away with its user turn,
        and its prompt comes back."""
        turn = self.turn
        if turn is None:
            self.generating = False
            return
        if finish_reason in ("cancelled", "error"):
            await self._drop_turn(turn)
        else:
            await turn.finish(stats, finish_reason)
            if self.conversation_id is not None:
                self.store.add(
                    self.conversation_id, "assistant", turn.answer, reasoning=turn.reasoning,
                    finish_reason=finish_reason, stats=asdict(stats) if stats else None,
                    reasoning_s=turn.reasoning_s,
                )
        self._sent = None
        self.turn = None
        self.generating = False  # last: tests and the UI treat this as "the turn is settled"

    async def _drop_turn(self, turn: AssistantMessage) -> None:
        """Take a cancelled or failed exchange off the screen and out of the store; the prompt
        and attachment come back, and a conversation left empty goes away."""
        await turn.stop()
        await turn.remove()
        sent = self._sent
        if sent is None:
            return
        await sent.widget.remove()
        self.context_used = sent.context_before
        if self.conversation_id is not None:
            self.store.delete_message(sent.message_id)
            if not self.store.messages(self.conversation_id):
                self.store.delete(self.conversation_id)
                self.conversation_id = None
                self.post_message(self.Changed())
        if not self.prompt.text:
            self.prompt.load_text(sent.text)
            self.prompt.move_cursor(self.prompt.document.end)
        self._set_attachment(sent.attachment)

    def cancel(self) -> None:
        """Stop the running reply; it ends as cancelled and its prompt comes back."""
        if self.generating and self.engine is not None:
            self.workers.cancel_group(self, "generate")  # seen by a worker that has not reached the engine yet
            self.engine.cancel()

    # -- the conversation shown

    async def show_conversation(self, conversation_id: int | None) -> None:
        """Show a stored conversation again (None: a new, empty one) and count its context."""
        self.conversation_id = conversation_id
        view = self.conversation
        await view.remove_children()
        if conversation_id is not None:
            await view.mount_all([stored_message(msg) for msg in self.store.messages(conversation_id)])
            view.anchor()
        self.context_used = 0
        if self.engine is not None and conversation_id is not None:
            try:
                self.context_used = len(self.engine.prompt_tokens(self.store.history(conversation_id))[0])
            except EdgedsError:
                pass
        self.refresh_header()

    def toggle_thinking(self) -> None:
        """Open or close the Thinking section of the last reply that has one; where reasoning
        is hidden, show it again with that section open."""
        replies = [r for r in self.conversation.query(AssistantMessage) if r.reasoning.strip()]
        if not replies:
            self.notify("No reasoning to show yet.", severity="warning")
            return
        thinking = replies[-1].thinking
        thinking.collapsed = self.show_reasoning and not thinking.collapsed
        if not self.show_reasoning:
            self.toggle_all_reasoning()
        if not thinking.collapsed:
            thinking.scroll_visible(animate=False)

    def toggle_all_reasoning(self) -> None:
        """Hide or show every Thinking section."""
        self.show_reasoning = not self.show_reasoning
        self.conversation.set_class(not self.show_reasoning, "-hide-reasoning")

    # -- copy and attach

    def _last_reply(self) -> AssistantMessage | None:
        replies = self.conversation.query(AssistantMessage)
        return replies.last() if replies else None

    def copy_reply(self) -> None:
        """Copy the last reply's answer to the clipboard."""
        reply = self._last_reply()
        if reply is None or not reply.answer:
            self.notify("No reply to copy.", severity="warning")
            return
        self.app.copy_to_clipboard(reply.answer)
        self.notify("Reply copied")

    def copy_code(self) -> None:
        """Copy the last code block of the last reply to the clipboard."""
        reply = self._last_reply()
        blocks = code_blocks(reply.answer) if reply is not None else []
        if not blocks:
            self.notify("The last reply has no code block.", severity="warning")
            return
        self.app.copy_to_clipboard(blocks[-1])
        self.notify("Code block copied")

    def attach_file(self, path: str | Path) -> bool:
        """Attach a text file to the next prompt (DeepSeek's file template); notify on failure."""
        try:
            self._set_attachment(read_attachment(path))
        except EdgedsError as err:
            self.notify(str(err), severity="error")
            return False
        return True

    def remove_attachment(self) -> None:
        self._set_attachment(None)

    def _set_attachment(self, attachment: tuple[str, str] | None) -> None:
        self.attachment = attachment
        label = self.query_one("#attachment", Static)
        label.display = attachment is not None
        if attachment is not None:
            label.update(f"📎 {attachment[0]} ({len(attachment[1])} chars) · Ctrl+P → Remove attachment")
