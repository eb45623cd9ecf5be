"""Speculative decoding beside the per-request token rules: a JSON schema on the answer (also
after an R1 think block closed by the reasoning budget) and stop strings give the very same
tokens, text and finish_reason with a draft as without one."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edgeds.runtime import Engine, GenerationParams
from edgeds.runtime.speculative import NgramDrafter
from edgeds.runtime.structured import schema_grammar
from tests.test_speculative import FIXED, THREADS, drafted_engine, tokens_of

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24}, "colours": {"type": "array", "maxItems": 4,
                                                                            "items": {"type": "string",
                                                                                      "maxLength": 12}}},
    "required": ["name", "colours"],
    "additionalProperties": False,
}
PROMPT = "Name three colours of the rainbow, and repeat them: red, orange, yellow, red, orange, yellow."


@pytest.fixture(scope="module")
def smol(smollm2_path):
    with Engine(smollm2_path, n_ctx=1024, n_threads=THREADS) as engine:
        yield engine


@pytest.fixture(scope="module")
def smol_ngram(smollm2_path):
    with drafted_engine(smollm2_path, NgramDrafter()) as engine:
        yield engine


def test_json_schema_with_ngram_drafts_is_token_for_token_the_same(smol, smol_ngram):
    params = GenerationParams(max_tokens=48, temperature=0, grammar=schema_grammar(SCHEMA))
    want, plain = tokens_of(smol, PROMPT, params)
    got, spec = tokens_of(smol_ngram, PROMPT, params)
    assert got == want
    assert spec.answer == plain.answer and spec.stats.finish_reason == plain.stats.finish_reason == "stop"
    jsonschema.validate(json.loads(spec.answer), SCHEMA)
    assert spec.stats.draft_tokens > 0  # the drafts ran under the grammar, not beside it


@pytest.mark.slow
def test_json_schema_after_the_reasoning_budget_with_a_draft(tiny_r1_gguf):
    """R1 path: the think block is closed by the budget, then the grammar joins; drafting waits
    for that and the output is the same token for token."""
    params = GenerationParams(max_tokens=60, temperature=0, repeat_penalty=1.0, reasoning_budget=4,
                              grammar=schema_grammar(SCHEMA))
    with Engine(tiny_r1_gguf, n_ctx=512, n_threads=THREADS) as plain_engine:
        want, plain = tokens_of(plain_engine, "Hi", params)
    with drafted_engine(tiny_r1_gguf, tiny_r1_gguf, n_ctx=512) as fast:
        got, spec = tokens_of(fast, "Hi", params)
    assert got == want
    assert spec.reasoning == plain.reasoning and plain.reasoning.strip()
    assert spec.answer == plain.answer and spec.stats.finish_reason == plain.stats.finish_reason
    jsonschema.validate(json.loads(spec.answer), SCHEMA)
    # the draft runs without the grammar, so under it fewer of its tokens are accepted
    assert 0 < spec.stats.accepted_tokens <= spec.stats.draft_tokens


def _stop_in(answer: str) -> str:
    """A stop string from late in `answer`, after the drafts have begun (its first occurrence is
    where it cuts)."""
    late = len(answer) * 3 // 4
    return answer[late:late + 5]


@pytest.mark.parametrize("prompt", [PROMPT, "Count from 1 to 12."])
def test_stop_strings_with_ngram_drafts_cut_at_the_same_place(smol, smol_ngram, prompt):
    free = GenerationParams(max_tokens=40, temperature=0)
    _, whole = tokens_of(smol, prompt, free)
    stop = _stop_in(whole.answer)
    params = GenerationParams(max_tokens=40, temperature=0, stop=(stop, "zzqx"))
    _, plain = tokens_of(smol, prompt, params)
    _, spec = tokens_of(smol_ngram, prompt, params)
    assert plain.stats.finish_reason == spec.stats.finish_reason == "stop"
    assert spec.answer == plain.answer
    assert plain.answer.strip() == whole.answer[:whole.answer.find(stop)].strip()
    assert stop not in spec.answer
    assert spec.stats.answer_tokens == plain.stats.answer_tokens  # tokens accepted past the stop are not counted
    assert spec.stats.draft_tokens > 0


@pytest.mark.slow
def test_the_scheduler_with_ngram_drafts_keeps_schemas_and_stops(smollm2_path, smol):
    """The same on the Scheduler's path (two requests decoded together, drafted per slot)."""
    from edgeds.loader import open_scheduler

    prompts = [PROMPT, "Count from 1 to 12."]
    _, whole = tokens_of(smol, prompts[1], GenerationParams(max_tokens=40, temperature=0))
    requests = [GenerationParams(max_tokens=48, temperature=0, grammar=schema_grammar(SCHEMA)),
                GenerationParams(max_tokens=40, temperature=0, stop=(_stop_in(whole.answer),))]
    results = []
    for draft in (None, "ngram"):
        scheduler = open_scheduler(smollm2_path, parallel=2, seq_ctx=512, n_threads=THREADS, draft=draft,
                                   draft_max=FIXED if draft else None)
        try:
            futures = [scheduler.submit([{"role": "user", "content": p}], params) for p, params in zip(prompts, requests)]
            results.append([f.result(300) for f in futures])
        finally:
            scheduler.close()
            scheduler.engine.close()
    for plain, spec in zip(*results):
        assert (spec.answer, spec.stats.finish_reason, spec.stats.answer_tokens) == \
            (plain.answer, plain.stats.finish_reason, plain.stats.answer_tokens)
        assert plain.stats.finish_reason == "stop"
    jsonschema.validate(json.loads(results[1][0].answer), SCHEMA)
    assert sum(r.stats.draft_tokens for r in results[1]) > 0
