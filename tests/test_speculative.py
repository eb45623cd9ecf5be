"""Speculative decoding on the real runtime: a draft changes how many tokens a step yields,
never which tokens come out (greedy: the very same tokens; sampled: the same distribution)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from edgeds.errors import UsageError
from edgeds.events import collect
from edgeds.llamacpp.binding import LoadOptions, Model, Sampler, SamplingParams
from edgeds.runtime import Engine, GenerationParams
from edgeds.runtime.scheduler import Scheduler
from edgeds.runtime.speculative import (DecodeCosts, DraftModel, DraftState, NgramDrafter, Speculation, best_length,
                                        check_compatible, incompatibility, verify)
from tests.conftest import THINK_GRAMMAR

PROMPTS = ["Write a short poem about the sea.", "Count from 1 to 12.",
           "Repeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog."]
GREEDY = GenerationParams(max_tokens=32, temperature=0)
# Draft on every step: what these tests check must not depend on whether drafting pays on this
# machine (the default length is chosen from measured costs, and may be none).
FIXED = 4
THREADS = 1  # llama.cpp's threads spin while they wait: on a shared, busy machine one is fastest  # the model's default repeat penalty stays on


def messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


# -- models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_requant(smollm2_path, tmp_path_factory) -> Path:
    """SmolLM2 requantized Q4_1 → Q4_0 by llama.cpp's quantizer: a draft that mostly agrees."""
    import llama_cpp

    from edgeds.llamacpp.quantizer import quantize

    out = tmp_path_factory.mktemp("smol-q4_0") / "smollm2-q4_0.gguf"
    quantize(smollm2_path, out, llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, allow_requantize=True)
    return out


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory) -> Path:
    """A tiny R1-tokenizer Qwen2 with 152064 tokens, as R1-Distill-Qwen-7B/14B/32B pad theirs
    (tiny_r1_gguf has 151936, as the 1.5B does): the pair the registry's default draft makes."""
    from edgeds.convert import convert
    from tests.tiny_checkpoints import build_qwen2

    hf = build_qwen2(tmp_path_factory.mktemp("tiny-7b-hf"), vocab_size=152064, num_hidden_layers=3)
    return convert(hf, tmp_path_factory.mktemp("tiny-7b") / "tiny-r1-7b.gguf", outtype="f32", progress=False)


def tokens_of(engine: Engine, prompt: str, params: GenerationParams):
    """The generated token ids (the KV cache's record of the reply) and the completion."""
    completion = collect(engine.generate(messages(prompt), params))
    prompt_len = completion.stats.prompt_tokens
    return engine._cached[prompt_len:], completion


@pytest.fixture(scope="module")
def smol(smollm2_path):
    with Engine(smollm2_path, n_ctx=1024, n_threads=THREADS) as engine:
        yield engine


def drafted_engine(target: Path, drafter, n_ctx: int = 1024, draft_max: int | None = FIXED) -> Engine:
    engine = Engine(target, n_ctx=n_ctx, n_threads=THREADS)
    if isinstance(drafter, Path):
        model = Model(drafter)
        check_compatible(engine.model, model)
        drafter = DraftModel(model, target_vocab=engine.model.n_vocab, seq_ctx=n_ctx, n_threads=engine.n_threads)
    engine.speculation = Speculation(drafter, draft_max)
    return engine


# -- greedy: token for token ----------------------------------------------------------------


@pytest.mark.parametrize("draft", ["self", "q4_0", "ngram"])
def test_greedy_smollm2_is_token_for_token_the_same(smol, smollm2_path, smol_requant, draft):
    drafter = {"self": smollm2_path, "q4_0": smol_requant, "ngram": NgramDrafter()}[draft]
    with drafted_engine(smollm2_path, drafter) as fast:
        drafted = accepted = 0
        for prompt in PROMPTS:
            want, plain = tokens_of(smol, prompt, GREEDY)
            got, spec = tokens_of(fast, prompt, GREEDY)
            assert got == want, prompt
            assert spec.answer == plain.answer and spec.stats.finish_reason == plain.stats.finish_reason
            assert plain.stats.draft_tokens == 0
            drafted += spec.stats.draft_tokens
            accepted += spec.stats.accepted_tokens
        assert 0 < accepted <= drafted
        if draft == "q4_0":
            assert accepted < drafted  # a different draft: rejections happened and were repaired
        assert fast.speculation.drafted == drafted and fast.speculation.accepted == accepted


def test_a_self_draft_without_penalty_is_always_accepted(smollm2_path):
    """Greedy model, greedy draft of the same weights: every draft matches (the verify rows are
    the right ones)."""
    with drafted_engine(smollm2_path, smollm2_path) as fast:
        _, spec = tokens_of(fast, PROMPTS[0], GenerationParams(max_tokens=40, temperature=0, repeat_penalty=1.0))
    assert spec.stats.draft_tokens > 20 and spec.stats.accepted_tokens == spec.stats.draft_tokens


def test_the_chosen_length_gives_up_a_draft_as_slow_as_the_model(smollm2_path, smol):
    """With the length chosen from measured costs, a draft that costs what the model does
    (itself) stops being used, however often it is right: drafting it can only lose."""
    params = GenerationParams(max_tokens=120, temperature=0, repeat_penalty=1.0)
    with drafted_engine(smollm2_path, smollm2_path, draft_max=None) as fast:
        want, _ = tokens_of(smol, PROMPTS[0], params)
        got, spec = tokens_of(fast, PROMPTS[0], params)
    assert got == want
    assert 0 < spec.stats.accepted_tokens == spec.stats.draft_tokens  # drafted while measuring, all accepted
    assert spec.stats.draft_tokens <= 30  # then mostly plain steps, but for rare probes


def test_the_scheduler_gives_up_a_draft_as_slow_as_the_model_too(smollm2_path):
    params = GenerationParams(max_tokens=80, temperature=0, repeat_penalty=1.0)

    def run(speculation):
        engine = Engine(smollm2_path, n_ctx=256, n_threads=THREADS, speculation=speculation)
        with Scheduler(engine, parallel=2, seq_ctx=512, n_threads=THREADS) as scheduler:
            done = [r.result(300) for r in [scheduler.submit(messages(p), params) for p in PROMPTS[:2]]]
        engine.close()
        return done

    plain = run(None)
    draft = DraftModel(Model(smollm2_path), target_vocab=49152, seq_ctx=512, n_seq=2, n_threads=THREADS)
    spec = run(Speculation(draft))
    assert [c.answer for c in spec] == [c.answer for c in plain]
    assert 0 < sum(c.stats.draft_tokens for c in spec) <= 40  # measured, then given up


def test_a_grammar_constrains_drafted_steps_too(smollm2_path, smol):
    """The grammar sampler is part of the chain that samples every verify row: the output
    follows the grammar and is the same with a draft."""
    params = GenerationParams(max_tokens=40, temperature=0, grammar=THINK_GRAMMAR)
    with drafted_engine(smollm2_path, smollm2_path) as fast:
        want, plain = tokens_of(smol, PROMPTS[0], params)
        got, spec = tokens_of(fast, PROMPTS[0], params)
    assert got == want and spec.reasoning == plain.reasoning and spec.answer == plain.answer
    assert spec.reasoning.strip() and spec.answer.strip()
    assert spec.stats.accepted_tokens > 0


def test_fixed_draft_length(smollm2_path, smol):
    with drafted_engine(smollm2_path, smollm2_path, draft_max=3) as fast:
        want, _ = tokens_of(smol, PROMPTS[1], GREEDY)
        got, spec = tokens_of(fast, PROMPTS[1], GREEDY)
    assert got == want
    assert spec.stats.draft_tokens > 0


@pytest.mark.slow
@pytest.mark.parametrize("draft", ["other", "self"])
def test_greedy_tiny_r1_with_a_smaller_vocabulary_draft(tiny_target, tiny_r1_gguf, draft):
    """The 152064-token target drafted by the 151936-token model (or itself): same tokens."""
    prompts = PROMPTS[:3]
    params = GenerationParams(max_tokens=32, temperature=0, repeat_penalty=1.0)  # a self-draft then always agrees
    with Engine(tiny_target, n_ctx=1024, n_threads=THREADS) as plain:
        want = [tokens_of(plain, p, params)[0] for p in prompts]
    with drafted_engine(tiny_target, tiny_r1_gguf if draft == "other" else tiny_target) as fast:
        for prompt, expected in zip(prompts, want):
            got, spec = tokens_of(fast, prompt, params)
            assert got == expected
            assert spec.stats.draft_tokens > 0
            if draft == "self":
                assert spec.stats.accepted_tokens == spec.stats.draft_tokens


@pytest.mark.slow
@pytest.mark.parametrize("family", ["smollm2", "tiny-r1"])
def test_scheduler_parallel_4_is_token_for_token_the_same(smollm2_path, smol_requant, tiny_target, family):
    # the tiny models' random weights agree too rarely: the tiny target drafts for itself
    target, draft = (smollm2_path, smol_requant) if family == "smollm2" else (tiny_target, tiny_target)
    prompts = PROMPTS + ["Say hello.", "Name a fruit."]  # more than the slots: a freed slot drafts anew

    def run(speculation):
        engine = Engine(target, n_ctx=256, n_threads=THREADS, speculation=speculation)
        with Scheduler(engine, parallel=4, seq_ctx=512, n_threads=THREADS) as scheduler:
            requests = [scheduler.submit(messages(p), GREEDY) for p in prompts]
            done = [r.result(300) for r in requests]
        engine.close()
        return done

    plain = run(None)
    vocab = Model(target, LoadOptions(vocab_only=True)).n_vocab
    drafters = [DraftModel(Model(draft), target_vocab=vocab, seq_ctx=256, n_threads=THREADS)]
    if family == "tiny-r1":  # ngram drafts for SmolLM2 through batch --parallel 4: test_speculative_cli
        drafters.append(NgramDrafter())
    for drafter in drafters:
        spec = run(Speculation(drafter, FIXED))
        assert [c.answer for c in spec] == [c.answer for c in plain]
        assert [c.stats.completion_tokens for c in spec] == [c.stats.completion_tokens for c in plain]
        if isinstance(drafter, DraftModel):  # (ngram: the tiny model's random text seldom repeats itself)
            assert sum(c.stats.accepted_tokens for c in spec) > 0


def test_a_request_that_reads_logits_decodes_plainly():
    """Requests whose per-token handling reads logits (logprobs) skip speculation."""

    class WithLogprobs:
        logprobs = True

    assert not Speculation.applies(WithLogprobs())
    assert Speculation.applies(GENERATION_WITH_GRAMMAR)


GENERATION_WITH_GRAMMAR = GenerationParams(grammar='root ::= "a"')


# -- sampled: the same distribution ---------------------------------------------------------


def chi_square_critical(df: int, alpha_z: float = 2.3263) -> float:
    """The chi-square critical value at p = 0.01 (Wilson-Hilferty; z of 0.99 = 2.3263)."""
    h = 2 / (9 * df)
    return df * (1 - h + alpha_z * math.sqrt(h)) ** 3


def homogeneity(a: Counter, b: Counter, min_expected: float = 5) -> tuple[float, int]:
    """Two-sample chi-square statistic over the categories (rare ones pooled) and its df."""
    n_a, n_b = sum(a.values()), sum(b.values())
    cells, pooled = [], [0, 0]
    for key in set(a) | set(b):
        total = a[key] + b[key]
        if total * min(n_a, n_b) / (n_a + n_b) >= min_expected:
            cells.append((a[key], b[key]))
        else:
            pooled[0] += a[key]
            pooled[1] += b[key]
    if sum(pooled) * min(n_a, n_b) / (n_a + n_b) >= min_expected:
        cells.append(tuple(pooled))
    stat = 0.0
    for x, y in cells:
        total = x + y
        ea, eb = total * n_a / (n_a + n_b), total * n_b / (n_a + n_b)
        stat += (x - ea) ** 2 / ea + (y - eb) ** 2 / eb
    return stat, len(cells) - 1


def test_chi_square_helper_tells_distributions_apart():
    same = homogeneity(Counter({1: 500, 2: 300, 3: 200}), Counter({1: 510, 2: 290, 3: 200}))
    other = homogeneity(Counter({1: 500, 2: 300, 3: 200}), Counter({1: 400, 2: 400, 3: 200}))
    assert same[0] < chi_square_critical(same[1]) < other[0]
    assert abs(chi_square_critical(10) - 23.209) < 0.1  # the table's value


@pytest.mark.slow
def test_sampled_tokens_keep_the_models_distribution(smollm2_path, smol_requant):
    """At temperature 0.8, (first, second) sampled tokens over 2000 seeds have the same
    distribution with a draft as without (independent seeds for the two samples). The second
    token is the first one a draft step yields: drafted after the first, verified in one batch.

    Trials that sampled the same first token share its decode (plain) or its draft and verify
    batch (drafted): sampling only reads the logits rows, so each trial's sampler chain sees
    exactly what a generation of its own would."""
    trials, n_draft = 2000, 3
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)  # top-k first: cheap to sample
    with drafted_engine(smollm2_path, smol_requant, n_ctx=256, draft_max=n_draft) as engine:
        ctx, drafter = engine.ctx, engine.speculation.drafter
        prompt, _ = engine.prompt_tokens(messages("Tell me a story."))
        n = len(prompt)
        ctx.decode_prompt(prompt, 0)
        samplers = {side: [Sampler(engine.model, SamplingParams(**{**params.__dict__, "seed": base + i}))
                           for i in range(trials)] for side, base in (("plain", 0), ("drafted", 100_000))}
        firsts = {side: [s.sample(ctx) for s in chains] for side, chains in samplers.items()}
        counts = {"plain": Counter(), "drafted": Counter()}
        rejected = accepted = 0
        for first in set(firsts["plain"]) | set(firsts["drafted"]):
            plain = [s for s, f in zip(samplers["plain"], firsts["plain"]) if f == first]
            drafted = [s for s, f in zip(samplers["drafted"], firsts["drafted"]) if f == first]
            ctx.decode_one(first, n)
            for sampler in plain:
                counts["plain"][(first, sampler.sample(ctx))] += 1
            ctx.forget(0, n)
            draft = drafter.propose_many([(0, prompt + [first], n_draft)])[0]
            assert len(draft) == n_draft
            ctx.decode([(first, n, 0, True)] + [(t, n + 1 + i, 0, True) for i, t in enumerate(draft)])
            for sampler in drafted:
                out = verify(sampler.sample, ctx, range(n_draft + 1), draft)
                counts["drafted"][(first, out[0])] += 1
                rejected += len(out) <= n_draft
                accepted += len(out) - 1
            ctx.forget(0, n)
        for chains in samplers.values():
            for sampler in chains:
                sampler.close()
    stat, df = homogeneity(counts["plain"], counts["drafted"])
    assert df >= 3  # the test sees a real distribution, not one token
    assert rejected > trials // 10 and accepted > trials // 10  # both ways of ending a step happened
    assert stat < chi_square_critical(df), (stat, df)


# -- the drafters ---------------------------------------------------------------------------


def test_ngram_proposes_what_followed_the_latest_occurrence():
    history = [1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3]
    assert NgramDrafter.propose(history, 2) == [7, 8]  # the latest earlier "1 2 3"
    assert NgramDrafter.propose(history, 10) == [7, 8, 1, 2, 3]
    assert NgramDrafter.propose([5, 6, 7], 4) == []
    assert NgramDrafter.propose(history, 0) == []


def test_decode_costs_are_fitted_from_decodes_of_several_sizes():
    costs = DecodeCosts()
    for _ in range(10):
        costs.observe_decode(5, 0.008 + 0.0055 * 5)
    assert costs.fit() is None  # one size only: the cost of a row cannot be told apart
    for rows in (1, 3, 9, 1, 5, 2) * 3:
        costs.observe_decode(rows, 0.008 + 0.0055 * rows)
    first, per_row = costs.fit()
    assert first == pytest.approx(0.008, abs=0.0005) and per_row == pytest.approx(0.0055, abs=0.0002)
    for _ in range(300):  # plain steps only, on a machine grown slower: the row cost is remembered
        costs.observe_decode(1, 0.010 + 0.0055)
    first, per_row = costs.fit()
    assert per_row == pytest.approx(0.0055, abs=0.0002) and first == pytest.approx(0.010, abs=0.0005)
    costs.observe_draft(4, 0.02)
    costs.observe_draft(2, 0.02)
    assert costs.draft_token == pytest.approx(0.7 * 0.005 + 0.3 * 0.01)


def test_draft_length_follows_what_a_step_yields_for_what_it_costs():
    # verify rows nearly free (a GPU): draft long when drafts are good, a little when they are not
    assert best_length(0.9, own_row=0.010, extra_row=0.0005) >= 8
    assert 1 <= best_length(0.3, own_row=0.010, extra_row=0.0005) <= 3
    # each verify row costs 60% of a step (batched kernels that save nothing): drafting at an
    # acceptance of one half loses, at 0.9 it wins
    assert best_length(0.5, own_row=0.008, extra_row=0.0048) == 0
    assert best_length(0.9, own_row=0.008, extra_row=0.0048) > 0
    # a draft model as slow as the model itself never pays
    assert best_length(0.95, own_row=0.010, extra_row=0.0025 + 0.010) == 0


def test_a_draft_state_stops_drafting_where_it_loses_and_probes_again():
    costs = DecodeCosts()
    for rows in (1, 2, 5, 9) * 5:  # each verify row costs 5 ms of an 8 ms step
        costs.observe_decode(rows, 0.003 + 0.005 * rows)
    state = DraftState()
    for _ in range(10):
        state.record(2, 1)  # one drafted token in two accepted: not worth 60% of a step
    lengths = [state.length(costs) for _ in range(100)]
    assert lengths.count(0) >= 95 and 1 in lengths  # plain steps, with an occasional probe
    for _ in range(10):
        state.record(8, 8)  # the answer starts copying its input
    assert state.length(costs) >= 3
    assert (state.drafted, state.accepted) == (100, 90)
    fixed = DraftState(fixed=5)
    fixed.record(5, 0)
    assert fixed.length(costs) == 5 and fixed.drafted == 5


def test_incompatible_vocabulary_is_named(smollm2_path, tiny_r1_gguf, tiny_target):
    with _Both(smollm2_path, tiny_r1_gguf) as (small, r1):
        why = incompatibility(r1, small)
        assert "49152" in why and "151936" in why and "128" in why
        with pytest.raises(UsageError, match="cannot draft for"):
            check_compatible(r1, small)
    with _Both(tiny_target, tiny_r1_gguf) as (target, draft):
        assert incompatibility(target, draft) is None  # 152064 vs 151936: within llama.cpp's 128


class _Both:
    def __init__(self, *paths):
        self.models = [Model(p, LoadOptions(vocab_only=True)) for p in paths]

    def __enter__(self):
        return self.models

    def __exit__(self, *exc):
        for model in self.models:
            model.close()
