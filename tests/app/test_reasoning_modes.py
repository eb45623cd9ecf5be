"""Trap 2 of the first day in the chat app: R1's reasoning on a GGUF made by llama.cpp's own
converter, with the published template that does not open <think> (see tests/test_think_prefix.py
for run, batch and serve). A grammar makes the tiny model write each shape of reply; the app
must show reasoning as Thinking, never a tag, and say when a reply stopped while thinking."""

from __future__ import annotations

import pytest

from edgeds.app import ChatApp
from edgeds.runtime import Engine
from edgeds.runtime.params import GenerationParams
from edgeds.store import Store
from tests.app.support import reply_done, send
from tests.test_think_prefix import CASES, check_reply

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(reference_r1_gguf):
    with Engine(reference_r1_gguf, n_ctx=1024) as engine:
        yield engine


@pytest.mark.parametrize("case", CASES)
async def test_chat_app(case, engine, tmp_path):
    grammar, max_tokens, *_ = CASES[case]
    params = GenerationParams(grammar=grammar, max_tokens=max_tokens or 200, seed=1)
    app = ChatApp(engine=engine, params=params, store=Store(tmp_path / "chats.db"))
    async with app.run_test(size=(100, 36)) as pilot:
        await send(pilot, "What is 2+2?")
        reply = await reply_done(pilot)
        stats = app.last_stats
        check_reply(case, reply.reasoning, reply.answer, stats.finish_reason, stats.stopped_thinking)
        assert reply.answer_view.source == reply.answer
        if stats.stopped_thinking:
            assert reply.stop_note == "stopped while thinking: max tokens reached"
        else:
            assert reply.stop_note is None
