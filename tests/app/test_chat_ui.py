"""The chat app's keys, dialogs and layout, each test written the way a first-day user met the
trap (issue 11): keys that did nothing from the prompt box, a Ctrl+T that hid everything, bare
text boxes for the model and the attachment, a cut-off footer at 80×24."""

from __future__ import annotations

import pytest
from textual.widgets import DirectoryTree, Footer, OptionList
from textual.widgets._collapsible import CollapsibleTitle
from textual.widgets._footer import FooterKey

from edgeds.app import ChatApp
from edgeds.app.header import ChatHeader
from edgeds.app.model_choices import remember_model
from edgeds.app.screens import FilePicker, ModelPicker, TextPrompt
from edgeds.app.widgets import AssistantMessage, PromptInput
from edgeds.catalog.registry import load_registry
from edgeds.runtime import Engine
from edgeds.store import Store
from tests.app.support import REPLY, RecordingApp, cache_quant, store_with_exchange, wait_for

SIZE = (100, 32)


async def open_squares(pilot) -> AssistantMessage:
    """Show the stored "Python squares" exchange; the prompt box has the focus, as it always has."""
    app = pilot.app
    await app.load_conversation(next(c.id for c in app.store.conversations() if c.title == "Python squares"))
    await pilot.pause()
    assert app.focused is app.query_one(PromptInput)
    return app.query(AssistantMessage).last()


async def test_copy_and_export_keys_work_while_typing(tmp_path):
    """Found as: Ctrl+Y and Ctrl+E did nothing while the prompt box had the focus."""
    app = ChatApp(store=store_with_exchange(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await open_squares(pilot)
        await pilot.press(*"draft")
        await pilot.press("ctrl+y")
        assert app.clipboard == REPLY
        assert app.prompt.text == "draft"
        await pilot.press("ctrl+e")
        await pilot.pause()
        assert isinstance(app.screen, TextPrompt)  # the export dialog
        dialog_input = app.screen.query_one("Input")
        dialog_input.cursor_position = 0
        await pilot.press("ctrl+e")  # inside the dialog: the text box's own end-of-line key
        await pilot.pause()
        assert len(app.screen_stack) == 2 and dialog_input.cursor_position == len(dialog_input.value)


async def test_ctrl_t_opens_and_closes_the_last_replys_thinking(tmp_path):
    """Found as: Ctrl+T hid the whole Thinking section instead of opening it; opening took an
    undocumented Shift+Tab, Enter."""
    app = RecordingApp(store=store_with_exchange(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        reply = await open_squares(pilot)
        thinking = reply.thinking
        assert thinking.collapsed and thinking.display
        await pilot.press("ctrl+t")
        assert not thinking.collapsed and thinking.display
        await pilot.press("ctrl+t")
        assert thinking.collapsed
        # a click anywhere on the title line opens it, and copies nothing
        app.copy_to_clipboard("untouched")
        await pilot.click(thinking.query_one(CollapsibleTitle), offset=(60, 0))
        assert not thinking.collapsed and app.clipboard == "untouched"
        await pilot.click(thinking.query_one(CollapsibleTitle), offset=(60, 0))
        assert thinking.collapsed
        # the palette's "Hide all reasoning"; Ctrl+T brings it back, open
        app.action_toggle_all_reasoning()
        await pilot.pause()
        assert not thinking.display
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert thinking.display and not thinking.collapsed
        await app.load_conversation(None)
        await pilot.press("ctrl+t")
        assert app.notes[-1] == ("warning", "No reasoning to show yet.")


@pytest.mark.parametrize("finish, why", [("length", "stopped while thinking: max tokens reached"),
                                         ("cancelled", "cancelled while thinking")])
async def test_stored_reply_that_ended_while_thinking_says_why(tmp_path, finish, why):
    """A reply stored before Stats said so: the message state (reasoning, no answer) tells."""
    store = Store(tmp_path / "chats.db")
    conv = store.create("Cut short")
    store.add(conv.id, "user", "Prove it.")
    store.add(conv.id, "assistant", "", reasoning="Let me think about this carefully", finish_reason=finish,
              reasoning_s=10.8, stats={"prompt_tokens": 9, "reasoning_tokens": 64, "finish_reason": finish})
    app = ChatApp(store=store)
    async with app.run_test(size=SIZE) as pilot:
        await app.load_conversation(conv.id)
        await pilot.pause()
        reply = app.query(AssistantMessage).last()
        assert why in str(reply.query_one(".stats").render())
        assert str(reply.thinking.title).startswith(f"{why.split(':')[0].capitalize()} after 10.8s")
        assert not reply.thinking.collapsed and reply.has_class("-interrupted")


async def test_model_switcher_lists_downloaded_and_recent_models(smollm2_path, tmp_path, monkeypatch):
    """Found as: Ctrl+L was a bare text box, with no list of the models on this machine."""
    import huggingface_hub.constants

    monkeypatch.setenv("EDGEDS_HOME", str(tmp_path / "home"))  # no recent or added models from other tests
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    entry = load_registry().get("r1-distill-qwen-1.5b")
    cache_quant(tmp_path / "hub", entry.quants["Q4_K_M"], smollm2_path)
    remember_model(str(tmp_path / "gone.gguf"))  # a recent file that was deleted since
    app = ChatApp(store=Store(tmp_path / "chats.db"), n_ctx=512)
    async with app.run_test(size=SIZE) as pilot:
        app.switch_model(str(smollm2_path))
        await wait_for(pilot, lambda: app.engine is not None, 60)
        first = app.engine
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert isinstance(app.screen, ModelPicker)
        choices = app.screen.query_one(OptionList)
        specs = [choices.get_option_at_index(i).id for i in range(choices.option_count)]
        assert specs == [str(smollm2_path), "r1-distill-qwen-1.5b:Q4_K_M"]  # recent first; no gone.gguf
        assert str(choices.get_option_at_index(0).prompt) == f"{smollm2_path.name}  recent · {smollm2_path.parent}"
        assert "downloaded" in str(choices.get_option_at_index(1).prompt)
        await pilot.press("down")  # from the typed value into the list
        assert app.focused is choices
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.engine is not first, 60)
        assert app.query_one(ChatHeader).text.startswith(smollm2_path.name)


async def test_attach_picks_a_file_from_a_tree_or_a_typed_path(tmp_path, monkeypatch):
    """Found as: Ctrl+O was a bare text box; now a file tree starts in the current directory."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("alpha\nbeta\n")
    (docs / "other.txt").write_text("gamma\n")
    monkeypatch.chdir(docs)
    app = ChatApp(store=Store(tmp_path / "chats.db"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert isinstance(app.screen, FilePicker)
        tree = app.screen.query_one(DirectoryTree)
        assert tree.path == docs
        await wait_for(pilot, lambda: len(tree.root.children) == 2, 10)
        await pilot.press("down", "down", "enter")  # into the tree, past the folder: the first file
        await wait_for(pilot, lambda: app.attachment is not None, 10)
        assert app.attachment == ("notes.txt", "alpha\nbeta")
        app.action_remove_attachment()
        await pilot.press("ctrl+o")
        await pilot.pause()
        app.screen.query_one("Input").value = "other.txt"
        await pilot.press("enter")
        await pilot.pause()
        assert app.attachment == ("other.txt", "gamma")


async def test_80x24_shows_the_whole_footer_and_the_context_counter(smollm2_path, tmp_path):
    """Found as: at 80×24 the footer lost its last keys and the header its context counter."""
    with Engine(smollm2_path, n_ctx=512, placement="CPU only: all 30 layers on CPU") as engine:
        app = ChatApp(engine=engine, store=store_with_exchange(tmp_path))
        async with app.run_test(size=(80, 24)) as pilot:
            await open_squares(pilot)
            keys = list(app.query(FooterKey))
            assert {k.description for k in keys} >= {"Stop", "Think", "Chats", "Model", "Attach", "Copy", "Newline"}
            regions = sorted((k.region for k in keys), key=lambda r: r.x)
            assert all(a.right <= b.x for a, b in zip(regions, regions[1:]))  # none hidden under the next
            assert regions[-1].right <= 80 and app.query_one(Footer).max_scroll_x == 0
            context = app.query_one("#header > .context")
            assert str(context.render()).startswith("ctx ") and 0 < context.region.x and context.region.right <= 80
            assert app.query_one(ChatHeader).text.startswith(smollm2_path.name)  # cut to fit on screen
            assert not app.sidebar.display
