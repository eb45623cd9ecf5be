"""The chat app driven by Pilot on the real engine: the tiny R1-tokenizer model (a grammar
makes it reason, then answer) and SmolLM2 for plain answers."""

from __future__ import annotations

import re

import pytest

from edgeds.app import ChatApp
from edgeds.app.attachments import with_file
from edgeds.app.chat import ChatView
from edgeds.app.conversations import ConversationItem
from edgeds.app.header import ChatHeader
from edgeds.app.widgets import AssistantMessage, PromptInput, UserMessage
from edgeds.runtime import Engine
from edgeds.runtime.params import GenerationParams
from edgeds.store import Store
from tests.app.support import RecordingApp, reply_done, send, wait_for
from tests.conftest import THINK_GRAMMAR

SIZE = (100, 36)


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


@pytest.mark.slow
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
        # a click on the title opens it, Ctrl+T closes it again
        await pilot.click(reply.thinking._title)
        assert not reply.thinking.collapsed
        await pilot.press("ctrl+t")
        assert reply.thinking.collapsed and reply.thinking.display
    stored = store.messages(store.conversations()[0].id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].reasoning == reply.reasoning and stored[1].content == reply.answer


@pytest.mark.slow
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
        assert f"ctx {stats.prompt_tokens + stats.answer_tokens}/2048" in app.query_one(ChatHeader).text
        assert app.query_one(PromptInput).text == ""


def endless(engine: Engine) -> GenerationParams:
    """A reply that runs until cancelled, whatever the sampled story: end-of-generation is banned."""
    return GenerationParams(max_tokens=1900, seed=2, logit_bias=((engine.model.eos_id, -100.0),))


@pytest.mark.slow
async def test_esc_takes_the_exchange_away_and_gives_the_prompt_back(smol, store):
    """Found as: Esc, then Enter on the restored prompt showed the question twice, and the
    cancelled reply stayed on screen though the model never saw it again."""
    short, long = GenerationParams(max_tokens=8, seed=2), endless(smol)
    app = ChatApp(engine=smol, params=short, store=store)
    first, prompt = "Name a colour.", "Write a very long story about a lighthouse keeper."
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, first)
        kept = await reply_done(pilot)
        app.chat.params = long
        await send(pilot, prompt)
        await wait_for(pilot, lambda: app.chat.turn is not None and app.chat.turn.answer)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.generating)
        assert app.last_stats.finish_reason == "cancelled"
        assert [u.text for u in app.query(UserMessage)] == [first]  # the cancelled exchange is gone
        assert list(app.query(AssistantMessage)) == [kept]
        assert app.query_one(PromptInput).text == prompt  # back for editing
        conv = store.conversations()[0]
        assert [m.content for m in store.messages(conv.id)] == [first, kept.answer]
        await pilot.press("enter")  # sent again as it was, and cancelled before the engine starts
        await wait_for(pilot, lambda: app.generating)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.generating)
        assert app.last_stats.finish_reason == "cancelled"
        assert [u.text for u in app.query(UserMessage)] == [first]
        app.chat.params = short
        await pilot.press("enter")
        await reply_done(pilot)
        assert [u.text for u in app.query(UserMessage)] == [first, prompt]  # once
        assert [m["content"] for m in app.last_request] == [first, kept.answer, prompt]


@pytest.mark.slow
async def test_esc_on_a_first_turn_leaves_no_empty_chat(smol, store):
    app = ChatApp(engine=smol, params=endless(smol), store=store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Write a very long story about a baker.")
        await wait_for(pilot, lambda: app.chat.turn is not None and (app.chat.turn.answer or app.chat.turn.reasoning))
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.generating)
        assert not app.query(UserMessage) and not app.query(AssistantMessage)
        assert store.conversations() == [] and app.conversation_id is None
        assert not app.sidebar.children  # the sidebar lost it too


@pytest.mark.slow
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
        await wait_for(pilot, lambda: not app.generating and app.notes)
        assert any(sev == "error" and "context" in text for sev, text in app.notes)
        assert not app.query(UserMessage) and not app.query(AssistantMessage)  # the failed exchange went away
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
    (tmp_path / "keymap.toml").write_text('[keymap]\n"chat.sidebar" = "f5"\n')
    app = ChatApp(store=store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+b")
        assert not app.sidebar.display
        await pilot.press("f5")
        assert app.sidebar.display


@pytest.mark.slow
async def test_command_palette_runs_app_commands(store):
    app = ChatApp(store=store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"Hide all reasoning")
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
        assert "no model loaded" in app.query_one(ChatHeader).text
        app.switch_model("no-such-model")
        await wait_for(pilot, lambda: any(sev == "error" for sev, _ in app.notes), 30)
        assert "no-such-model" in app.notes[-1][1] and app.engine is None
        await pilot.press("ctrl+l")
        await pilot.pause()
        app.screen.query_one("Input").value = str(smollm2_path)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.engine is not None, 60)
        header = app.query_one(ChatHeader).text
        assert header.startswith(f"{smollm2_path.name} · Q4_1 · ")  # the file the user opened
        assert app.engine.name not in header  # not the GGUF's internal name
        assert "ctx 0/512" in header
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


@pytest.mark.slow
async def test_context_counter_moves_while_the_reply_streams(smol, store, monkeypatch):
    """Found as: the header's ctx counter stood still until the reply ended."""
    shown: list[int] = []
    apply_delta = ChatView.on_turn_delta

    async def recording(chat: ChatView, message) -> None:
        await apply_delta(chat, message)
        shown.append(int(re.search(r"ctx (\d+)/", chat.query_one(ChatHeader).text).group(1)))

    monkeypatch.setattr(ChatView, "on_turn_delta", recording)
    app = ChatApp(engine=smol, params=GenerationParams(max_tokens=80, temperature=0.0), store=store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Write a long story about a cat.")
        await reply_done(pilot)
        stats = app.last_stats
        final = stats.prompt_tokens + stats.completion_tokens
        assert len(set(shown)) >= 2 and shown == sorted(shown)  # it moved, and only forward
        assert stats.prompt_tokens < shown[0] and shown[-1] <= final
        assert f"ctx {final}/2048" in app.query_one(ChatHeader).text


async def test_reply_cut_while_thinking_says_so(tiny, store):
    """Found as: a reply cut by max_tokens inside its reasoning folded into "Thought for 10.8s",
    with no answer and no word why."""
    params = GenerationParams(max_tokens=6, grammar=THINK_GRAMMAR, seed=3)
    app = RecordingApp(engine=tiny, params=params, store=store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Hi")
        reply = await reply_done(pilot)
        assert app.last_stats.finish_reason == "length" and reply.reasoning.strip() and not reply.answer
        why = "stopped while thinking: max tokens reached"
        assert why in str(reply.query_one(".stats").render())
        assert str(reply.thinking.title).startswith("Stopped while thinking after ")
        assert not reply.thinking.collapsed and reply.has_class("-interrupted")  # the reasoning stays in view
        assert ("warning", "Stopped while thinking: max tokens reached.") in app.notes
        await app.load_conversation(app.conversation_id)  # opened again from the store
        await pilot.pause()
        assert why in str(app.query(AssistantMessage).last().query_one(".stats").render())
