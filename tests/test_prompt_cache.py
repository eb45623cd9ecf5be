"""The prompt tokenizer that reuses the tokens of earlier prompts' shared starts gives exactly
the tokens of tokenizing each whole prompt (llama.cpp's tokenizer is the reference), for
conversations that share system prompts and turns, diverge mid-message, or carry special-token
text, odd whitespace and non-ASCII text in their content."""

from __future__ import annotations

import pytest

from edgeds.llamacpp.binding import LoadOptions, Model
from edgeds.runtime import Engine, template
from edgeds.runtime.prompt_cache import PromptTokenizer

LONG_SYSTEM = " ".join(f"Rule {i}: answer briefly, cite the rule." for i in range(80))


def conversations(markers: list[str]) -> list[list[dict]]:
    turns = [{"role": "user", "content": "What is 2+2?"},
             {"role": "assistant", "content": "<think>add them</think>4"},
             {"role": "user", "content": "  and 3+3?\n\n"}]
    out = []
    for system in (LONG_SYSTEM, LONG_SYSTEM + " One more rule.", LONG_SYSTEM[:500], "", "Be brief."):
        head = [{"role": "system", "content": system}] if system else []
        for n in (1, 2, 3):
            out.append(head + turns[:n])
        out.append(head + [{"role": "user", "content": "Écris un haïku 🌸 sur 東京\u0301 "}])
        out.append(head + [{"role": "user", "content": f"quote {markers[0]} this {markers[-1]}\t"}])
        out.append(head + [{"role": "user", "content": ""}])
        out.append(head + [{"role": "user", "content": " leading space"}, {"role": "assistant", "content": "\n"},
                           {"role": "user", "content": "x" * 300}])
    return out


def rendered(model: Model, chat_template: str | None, messages: list[dict]) -> str:
    bos = model.token_text(model.bos_id) if model.bos_id >= 0 else ""
    eos = model.token_text(model.eos_id) if model.eos_id >= 0 else ""
    return template.render(chat_template, template.answer_only(messages), bos_token=bos, eos_token=eos).text


@pytest.fixture(scope="module", params=["smollm2", "tiny_r1"])
def model(request) -> Model:
    path = request.getfixturevalue("smollm2_path" if request.param == "smollm2" else "tiny_r1_gguf")
    model = Model(path, LoadOptions(vocab_only=True))
    yield model
    model.close()


def test_same_tokens_as_tokenizing_the_whole_prompt(model):
    markers = [model.token_text(t) for t in (model.bos_id, model.eos_id) if t >= 0]
    tokenize = PromptTokenizer(model)
    texts = [rendered(model, model.chat_template, m) for m in conversations(markers)]
    reused = 0
    for text in texts + texts[::-1]:  # the second pass finds every text's start seen before
        want = model.tokenize(text, add_special=False, parse_special=True)
        assert tokenize(text) == want, text[:200]
        reused += bool(tokenize._seen[-1].cut_chars)
    assert reused > len(texts)  # special tokens were found to cut at, so starts were reused


def test_reuse_tokenizes_only_what_is_new(smollm2_path, monkeypatch):
    model = Model(smollm2_path, LoadOptions(vocab_only=True))
    tokenize = PromptTokenizer(model)
    system = [{"role": "system", "content": LONG_SYSTEM}]
    first = rendered(model, model.chat_template, system + [{"role": "user", "content": "Hi"}])
    second = rendered(model, model.chat_template, system + [{"role": "user", "content": "Name a colour."}])
    tokenize(first)
    asked: list[str] = []
    real = model.tokenize
    monkeypatch.setattr(model, "tokenize", lambda text, **kw: asked.append(text) or real(text, **kw))
    assert tokenize(second) == real(second, add_special=False, parse_special=True)
    assert len(asked) == 1 and len(asked[0]) < 100 and LONG_SYSTEM not in asked[0]
    model.close()


def test_engine_prompt_tokens_unchanged(smollm2_path):
    """The Engine's prompts (template, BOS, tokenizer) come out as an uncached tokenization."""
    with Engine(smollm2_path, n_ctx=256) as engine:
        for messages in conversations(["<|im_end|>"]):
            tokens, _ = engine.prompt_tokens(messages)
            want = engine.model.tokenize(rendered(engine.model, engine.chat_template, messages),
                                         add_special=False, parse_special=True)
            if engine.model.add_bos and want[:1] != [engine.model.bos_id]:
                want.insert(0, engine.model.bos_id)
            assert tokens == want
