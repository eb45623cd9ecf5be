"""The Engine on the real llama.cpp runtime: events, reasoning, cancellation, history."""

from __future__ import annotations

import threading

import pytest

from edgeds.errors import ContextOverflow
from edgeds.events import Answer, Done, Reasoning
from edgeds.runtime import Engine, GenerationParams
from edgeds.llamacpp.binding import TextStream
from tests.conftest import THINK_GRAMMAR


@pytest.fixture(scope="module")
def smol(smollm2_path):
    with Engine(smollm2_path, n_ctx=2048) as engine:
        yield engine


@pytest.fixture(scope="module")
def tiny(tiny_r1_gguf):
    with Engine(tiny_r1_gguf, n_ctx=2048) as engine:
        yield engine


def collect(events):
    events = list(events)
    assert isinstance(events[-1], Done) and sum(isinstance(e, Done) for e in events) == 1
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    answer = "".join(e.text for e in events if isinstance(e, Answer))
    return reasoning, answer, events[-1].stats


def test_defaults_are_not_the_bindings_512(smol, tiny):
    assert smol.n_ctx == 2048  # as asked
    with Engine(smol.model.path) as engine:
        assert engine.n_ctx > 512
        assert engine.n_ctx <= engine.model.n_ctx_train
    assert smol.defaults.temperature == 0.6 and smol.defaults.top_p == 0.95


def test_smollm2_answers_without_reasoning(smol):
    reasoning, answer, stats = collect(
        smol.generate([{"role": "user", "content": "What is the capital of France?"}], GenerationParams(max_tokens=40, seed=1))
    )
    assert reasoning == ""
    assert answer.strip()
    assert stats.reasoning_tokens == 0
    assert 0 < stats.answer_tokens <= 40
    assert stats.prompt_tokens > 5
    assert stats.decode_tok_s > 0 and stats.ttft_s > 0
    assert stats.finish_reason in ("stop", "length")


def test_same_seed_same_text(smol):
    messages = [{"role": "user", "content": "Name a colour."}]
    first = collect(smol.generate(messages, GenerationParams(max_tokens=24, seed=7)))[1]
    second = collect(smol.generate(messages, GenerationParams(max_tokens=24, seed=7)))[1]
    assert first == second


def test_grammar_drives_reasoning_then_answer(tiny):
    reasoning, answer, stats = collect(
        tiny.generate([{"role": "user", "content": "Hi"}], GenerationParams(max_tokens=120, grammar=THINK_GRAMMAR, seed=3))
    )
    assert reasoning and set(reasoning) <= set("abcdefghijklmnopqrstuvwxyz ")
    assert answer and set(answer) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ")
    assert "<think>" not in reasoning + answer and "</think>" not in reasoning + answer
    assert stats.finish_reason == "stop"
    assert stats.reasoning_tokens > 0 and stats.answer_tokens > 0


@pytest.mark.slow
def test_template_that_preopens_think(tiny_r1_gguf):
    engine = Engine(tiny_r1_gguf, n_ctx=1024)
    template = engine.chat_template + "{% if add_generation_prompt %}<think>\n{% endif %}"
    engine.close()
    grammar = r'''root ::= [a-z ]{8,30} "\n</think>\n\n" [A-Za-z ]{4,20}'''
    with Engine(tiny_r1_gguf, n_ctx=1024, chat_template=template) as engine:
        _, opens_think = engine.prompt_tokens([{"role": "user", "content": "Hi"}])
        assert opens_think
        reasoning, answer, stats = collect(
            engine.generate([{"role": "user", "content": "Hi"}], GenerationParams(max_tokens=120, grammar=grammar, seed=5))
        )
    assert reasoning.strip() and answer.strip()
    assert "</think>" not in reasoning + answer


def test_output_cut_before_close_tag_has_no_answer(tiny):
    reasoning, answer, stats = collect(
        tiny.generate([{"role": "user", "content": "Hi"}], GenerationParams(max_tokens=6, grammar=THINK_GRAMMAR, seed=3))
    )
    assert stats.finish_reason == "length"
    assert answer == ""
    assert stats.answer_tokens == 0 and stats.reasoning_tokens == 6


def test_cancel_from_another_thread(smol):
    events = smol.generate([{"role": "user", "content": "Write a long story about a dragon."}], GenerationParams(max_tokens=2000))
    seen = []
    for event in events:
        seen.append(event)
        if len(seen) == 3:
            threading.Thread(target=smol.cancel).start()
    stats = seen[-1].stats
    assert stats.finish_reason == "cancelled"
    assert stats.answer_tokens < 2000


def test_reasoning_never_goes_back_to_the_model(tiny):
    with_reasoning = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nsecret plan\n</think>\n\nHello!", "reasoning": "secret plan"},
        {"role": "user", "content": "Bye"},
    ]
    answers_only = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert tiny.prompt_tokens(with_reasoning) == tiny.prompt_tokens(answers_only)
    secret = tiny.model.tokenize("secret plan", add_special=False)
    tokens = tiny.prompt_tokens(with_reasoning)[0]
    assert not any(tokens[i : i + len(secret)] == secret for i in range(len(tokens)))


def test_system_prompt_is_folded_for_r1_models(tiny):
    assert tiny.allow_system is False
    folded = tiny.prompt_tokens([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    by_hand = tiny.prompt_tokens([{"role": "user", "content": "Be brief.\n\nHi"}])
    assert folded == by_hand


def test_follow_up_turn_reuses_the_kv_cache(smol):
    turn1 = [{"role": "user", "content": "Count to three."}]
    _, answer, first = collect(smol.generate(turn1, GenerationParams(max_tokens=16, seed=1)))
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And to five?"}]
    _, _, second = collect(smol.generate(turn2, GenerationParams(max_tokens=8, seed=1)))
    assert second.prompt_tokens > first.prompt_tokens
    # the whole first prompt was already in the KV cache: only the new part was decoded
    assert smol.reused_prompt_tokens >= first.prompt_tokens
    unrelated = [{"role": "user", "content": "Totally different question?"}]
    collect(smol.generate(unrelated, GenerationParams(max_tokens=4, seed=1)))
    assert smol.reused_prompt_tokens < first.prompt_tokens


def test_prompt_longer_than_context_is_a_clear_error(smollm2_path):
    with Engine(smollm2_path, n_ctx=256) as engine:
        with pytest.raises(ContextOverflow, match="256"):
            list(engine.generate([{"role": "user", "content": "word " * 400}]))


def test_text_stream_holds_split_utf8(tiny):
    text = "héllo 🦜 𝔘𝔫𝔦 世界 🪿"
    ids = tiny.model.tokenize(text, add_special=False)
    pieces = [tiny.model.token_piece(t) for t in ids]
    assert any(not _valid_utf8(p) for p in pieces), "the sample must split a character across tokens"
    stream = TextStream(tiny.model)
    out = [stream.push(t) for t in ids] + [stream.flush()]
    assert "".join(out) == text
    assert all("\ufffd" not in piece for piece in out)


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
