"""The chat app driven by Pilot on the real engine: the tiny R1-tokenizer model (a grammar
makes it reason, then answer) and SmolLM2 for plain answers."""

from __future__ import annotations

import time

import pytest

from edgeds.app import ChatApp
from edgeds.app.attachments import with_file
from edgeds.app.chat import ChatView
from edgeds.app.conversations import ConversationItem
from edgeds.app.widgets import AssistantMessage, PromptInput, UserMessage
from edgeds.runtime import Engine
from edgeds.runtime.params import GenerationParams
from edgeds.store import Store
from tests.conftest import THINK_GRAMMAR

SIZE = (100, 36)


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


@pytest.fixture
def streamed_states(monkeypatch) -> list[tuple[str, str, bool, str]]:
    """(reasoning, answer, collapsed, title) of the running turn right after each delta lands."""
    states = []
    apply_delta = ChatView.on_turn_delta

    async def recording(chat: ChatView, message) -> None:
        await apply_delta(chat, message)
        turn = chat.turn
        states.append((turn.reasoning, turn.answer, turn.thinking.collapsed, str(turn.thinking.title)))

    monkeypatch.setattr(ChatView, "on_turn_delta", recording)
    return states


@pytest.fixture(scope="module")
def tiny(tiny_r1_gguf):
    with Engine(tiny_r1_gguf, n_ctx=1024) as engine:
        yield engine


@pytest.fixture(scope="module")
def smol(smollm2_path):
    with Engine(smollm2_path, n_ctx=2048) as engine:
        yield engine


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "chats.db")


THINK = GenerationParams(max_tokens=120, grammar=THINK_GRAMMAR, seed=3)


async def test_reasoning_opens_streams_and_collapses(tiny, store, streamed_states):
    app = ChatApp(engine=tiny, params=THINK, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Hi")
        reply = await reply_done(pilot)
        # while reasoning: the section is open, titled "Thinking…", and no answer yet
        thinking_states = [s for s in streamed_states if s[0] and not s[1]]
        assert thinking_states and all(not collapsed for _, _, collapsed, _ in thinking_states)
        assert all(title.startswith("Thinking…") for *_, title in thinking_states)
        # once the answer streams, the section is collapsed
        answer_states = [s for s in streamed_states if s[1]]
        assert answer_states and all(collapsed for _, _, collapsed, _ in answer_states)
        assert app.last_stats.finish_reason == "stop" and app.last_stats.reasoning_tokens > 0
        assert reply.reasoning.strip() and reply.answer.strip()
        assert "<think>" not in reply.reasoning + reply.answer
        assert reply.thinking.collapsed and str(reply.thinking.title).startswith("Thought for")
        assert f"{app.last_stats.reasoning_tokens} tokens" in str(reply.thinking.title)
        assert reply.answer_view.source == reply.answer
        # per-message toggle, then the global hide key
        await pilot.click(reply.thinking._title)
        assert not reply.thinking.collapsed
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: not reply.thinking.display, 5)
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: reply.thinking.display, 5)
    stored = store.messages(store.conversations()[0].id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].reasoning == reply.reasoning and stored[1].content == reply.answer


async def test_reasoning_is_not_sent_back(tiny, store):
    app = ChatApp(engine=tiny, params=THINK, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Hi")
        first = await reply_done(pilot)
        await send(pilot, "And then?")
        await wait_for(pilot, lambda: len(app.query(AssistantMessage)) == 2 and not app.generating)
    assert first.reasoning.strip() and first.answer.strip()
    sent = app.last_request
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert all(set(m) == {"role", "content"} for m in sent)
    assert sent[1]["content"] == first.answer
    tokens, _ = tiny.prompt_tokens(sent)
    prompt_text = b"".join(tiny.model.token_piece(t, special=True) for t in tokens).decode()
    assert first.answer.strip() in prompt_text
    assert first.reasoning.strip() not in prompt_text
    assert app.last_stats.prompt_tokens == len(tokens)


async def test_plain_answer_with_smollm2(smol, store):
    app = ChatApp(engine=smol, params=GenerationParams(max_tokens=24, seed=1), store=store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "What is the capital of France?")
        reply = await reply_done(pilot)
        assert reply.answer.strip() and not reply.reasoning
        assert not reply.thinking.display
        stats = app.last_stats
        assert stats.answer_tokens > 0 and stats.reasoning_tokens == 0
        assert f"{stats.decode_tok_s:.1f} tok/s" in str(reply.query_one(".stats").render())
        assert f"ctx {stats.prompt_tokens + stats.answer_tokens}/2048" in str(app.query_one("#header").render())
        assert app.query_one(PromptInput).text == ""


async def test_cancel_keeps_partial_turn_and_restores_prompt(smol, store):
    app = ChatApp(engine=smol, params=GenerationParams(max_tokens=2000, seed=2), store=store)
    prompt = "Write a very long story about a lighthouse keeper."
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, prompt)
        await wait_for(pilot, lambda: app.chat.turn is not None and app.chat.turn.answer)
        await pilot.press("escape")
        reply = await reply_done(pilot)
        assert app.last_stats.finish_reason == "cancelled"
        assert reply.finish_reason == "cancelled" and reply.has_class("-interrupted")
        assert reply.answer  # the partial answer stays on screen
        assert app.query_one(PromptInput).text == prompt
    conv = store.conversations()[0]
    assert store.messages(conv.id)[-1].finish_reason == "cancelled"
    assert store.history(conv.id) == []  # the cancelled turn is not sent back


async def test_history_persists_across_restarts(smol, tmp_path):
    params = GenerationParams(max_tokens=16, seed=1)
    app = ChatApp(engine=smol, params=params, store=Store(tmp_path / "chats.db"))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Name a colour.")
        first = await reply_done(pilot)
    app2 = ChatApp(engine=smol, params=params, store=Store(tmp_path / "chats.db"))
    async with app2.run_test(size=SIZE) as pilot:
        assert not app2.query(UserMessage)
        await pilot.press("ctrl+b")
        items = app2.query(ConversationItem)
        assert [i.conversation.title for i in items] == ["Name a colour."]
        await pilot.press("enter")
        await wait_for(pilot, lambda: app2.query(AssistantMessage))
        assert [u.text for u in app2.query(UserMessage)] == ["Name a colour."]
        assert app2.query(AssistantMessage).last().answer == first.answer
        await pilot.press("ctrl+b")
        await send(pilot, "Another one.")
        await wait_for(pilot, lambda: len(app2.query(AssistantMessage)) == 2 and not app2.generating)
        assert app2.last_request[:2] == [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": first.answer},
        ]


async def test_context_overflow_is_a_notification(tiny, store, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("word " * 3000)
    app = RecordingApp(engine=tiny, params=THINK, store=store)
    async with app.run_test(size=SIZE) as pilot:
        assert app.attach_file(big)
        await send(pilot, "Summarise this.")
        await reply_done(pilot)
        assert any(sev == "error" and "context" in text for sev, text in app.notes)
        assert app.query_one(PromptInput).text == "Summarise this."
        assert app.attachment == ("big.txt", big.read_text().rstrip("\n"))
        assert app.is_running


async def test_attached_file_uses_deepseek_template(smol, store, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("alpha\nbeta\n")
    app = ChatApp(engine=smol, params=GenerationParams(max_tokens=8, seed=1), store=store)
    async with app.run_test(size=SIZE) as pilot:
        assert app.attach_file(notes)
        await send(pilot, "What is in the file?")
        await reply_done(pilot)
        expected = "[file name]: notes.txt\n[file content begin]\nalpha\nbeta\n[file content end]\nWhat is in the file?"
        assert expected == with_file("notes.txt", "alpha\nbeta", "What is in the file?")
        assert app.last_request[-1]["content"] == expected
        assert "📎 notes.txt (2 lines)" in str(app.query(UserMessage).last().render())
        assert app.attachment is None


async def test_model_that_fails_to_load_is_a_notification(tmp_path, store):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    app = RecordingApp(str(broken), store=store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.notes, 30)
        assert app.notes[0][0] == "error" and "broken.gguf" in app.notes[0][1]
        assert app.engine is None and app.is_running
        await send(pilot, "hello?")
        assert app.notes[-1] == ("error", "No model loaded yet.")


async def test_keymap_file_remaps_bindings(store, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEDS_HOME", str(tmp_path))
    (tmp_path / "keymap.toml").write_text('[keymap]\n"chat.toggle_reasoning" = "f5"\n')
    app = ChatApp(store=store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+t")
        assert app.show_reasoning
        await pilot.press("f5")
        assert not app.show_reasoning


async def test_command_palette_runs_app_commands(store):
    app = ChatApp(store=store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"Toggle thinking")
        from textual.command import CommandList, CommandPalette

        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette)
                       and app.screen.query_one(CommandList).option_count > 0, 10)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: not app.show_reasoning, 10)


async def test_newline_keys_do_not_send(store):
    app = ChatApp(store=store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a", "ctrl+j", "b", "alt+enter", "c")
        assert app.query_one(PromptInput).text == "a\nb\nc"
        assert not app.query(UserMessage)


async def test_switch_model_from_a_file_and_a_bad_id(smollm2_path, store):
    app = RecordingApp(store=store, n_ctx=512)
    async with app.run_test(size=SIZE) as pilot:
        assert "no model loaded" in str(app.query_one("#header").render())
        app.switch_model("no-such-model")
        await wait_for(pilot, lambda: any(sev == "error" for sev, _ in app.notes), 30)
        assert "no-such-model" in app.notes[-1][1] and app.engine is None
        await pilot.press("ctrl+l")
        await pilot.pause()
        app.screen.query_one("Input").value = str(smollm2_path)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.engine is not None, 60)
        header = str(app.query_one("#header").render())
        assert "Q4_1" in header and "ctx 0/512" in header
        assert app.engine.placement and f" · {app.engine.placement} · " in header
        assert app.engine.model.path == smollm2_path


LONG = GenerationParams(max_tokens=200, temperature=0.0)


@pytest.mark.slow
async def test_view_follows_the_reply_until_the_user_scrolls_up(smol, store):
    app = ChatApp(engine=smol, params=LONG, store=store)
    async with app.run_test(size=(80, 16)) as pilot:
        view = app.conversation
        await send(pilot, "Write a long story about a lighthouse keeper.")
        await reply_done(pilot)
        await pilot.pause(0.1)
        assert view.max_scroll_y > 0 and view.scroll_y == view.max_scroll_y  # followed to the bottom

        await send(pilot, "Write another long story, about a baker.")
        await wait_for(pilot, lambda: view.max_scroll_y > 0 and app.generating and app.chat.turn and app.chat.turn.answer)
        view.scroll_home(animate=False, immediate=True)
        await pilot.pause(0.05)
        height_when_scrolled = view.max_scroll_y
        await reply_done(pilot)
        await pilot.pause(0.1)
        assert view.max_scroll_y > height_when_scrolled  # the reply kept growing below
        assert view.scroll_y == 0  # and the view stayed where the user put it
