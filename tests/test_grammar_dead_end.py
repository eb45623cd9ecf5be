"""A grammar that reaches a dead end (no token of the vocabulary can continue it) ends its
generation with an error, and the process lives: llama.cpp's own `llama_sampler_sample` would
accept a token the grammar refuses and abort. Sampling in steps (edgeds.llamacpp.binding.Sampler)
draws the same tokens as `llama_sampler_sample` for every grammar that has a way on."""

from __future__ import annotations

import subprocess
import sys

import llama_cpp
import pytest

from edgeds.events import collect
from edgeds.llamacpp import binding
from edgeds.runtime import Engine
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.scheduler import Scheduler
from edgeds.runtime.structured import response_format_grammar
from tests.conftest import REPO
from tests.serve_process import healthy, post, serving

# U+200000 is past what any UTF-8 byte sequence can spell (llama.cpp decodes at most 21 bits),
# so after the "a" no token fits; check_grammar lets it through (it parses as a code point)
DEAD_END = 'root ::= "a" [\\U00200000]'
ASK = [{"role": "user", "content": "Write the letter a."}]


@pytest.fixture(scope="module")
def engine(smollm2_path):
    with Engine(smollm2_path, n_ctx=256) as engine:
        yield engine


@pytest.mark.slow
def test_llama_cpp_alone_aborts_on_this_grammar(smollm2_path):
    """The premise, in a subprocess: llama_sampler_sample on the dead end kills the process."""
    script = f"""
import sys
from edgeds.llamacpp import binding
import llama_cpp
binding.Sampler.sample = lambda self, ctx, index=-1: llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, index)
from edgeds.runtime import Engine
from edgeds.runtime.params import GenerationParams
from edgeds.events import collect
with Engine({str(smollm2_path)!r}, n_ctx=256) as engine:
    collect(engine.generate({ASK!r}, GenerationParams(grammar={DEAD_END!r}, max_tokens=4, temperature=0)))
print("survived")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "survived" not in done.stdout


@pytest.mark.parametrize("temperature", [0, 0.8])
def test_a_dead_end_ends_the_generation_with_an_error(engine, temperature):
    params = GenerationParams(grammar=DEAD_END, max_tokens=8, temperature=temperature, seed=3)
    done = collect(engine.generate(ASK, params))
    assert done.answer == "a" and done.stats.finish_reason == "error"
    assert "grammar allows no token" in done.stats.error
    after = collect(engine.generate(ASK, GenerationParams(max_tokens=3, temperature=0)))
    assert after.stats.finish_reason == "length" and after.answer  # the engine goes on


def test_a_dead_end_fails_its_own_sequence_only(engine):
    with Scheduler(engine, parallel=2, seq_ctx=256) as scheduler:
        dead = scheduler.submit(ASK, GenerationParams(grammar=DEAD_END, max_tokens=8, temperature=0))
        alive = scheduler.submit(ASK, GenerationParams(max_tokens=6, temperature=0))
        failed, finished = dead.result(), alive.result()
    assert failed.stats.finish_reason == "error" and "grammar" in failed.stats.error
    assert finished.stats.finish_reason in ("stop", "length") and finished.answer and finished.stats.error is None


SCHEMA = {"type": "json_schema", "json_schema": {"name": "p", "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"]}}}


@pytest.mark.parametrize("grammar", ['root ::= [a-z ]+ "."', response_format_grammar(SCHEMA)], ids=["words", "schema"])
@pytest.mark.parametrize("temperature, extra", [(0, {}), (0.9, {"top_k": 40, "top_p": 0.95, "repeat_penalty": 1.1})],
                         ids=["greedy", "sampled"])
def test_stepped_sampling_draws_what_llama_sampler_sample_draws(engine, monkeypatch, grammar, temperature, extra):
    params = GenerationParams(grammar=grammar, max_tokens=16, temperature=temperature, seed=11, **extra)
    stepped = collect(engine.generate(ASK, params))
    monkeypatch.setattr(binding.Sampler, "sample",
                        lambda self, ctx, index=-1: llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, index))
    reference = collect(engine.generate(ASK, params))
    assert stepped.stats.finish_reason != "error" and stepped.answer
    assert (stepped.answer, stepped.stats.completion_tokens) == (reference.answer, reference.stats.completion_tokens)


@pytest.mark.slow
def test_serve_survives_a_dead_end(smollm2_path, tmp_path):
    with serving(smollm2_path, tmp_path / "serve.log", "--parallel", "1") as (process, url):
        status, reply, _ = post(url, {"messages": ASK, "max_tokens": 8, "grammar": DEAD_END})
        assert status == 500 and "grammar allows no token" in reply["error"]["message"]
        assert process.poll() is None and healthy(url)
