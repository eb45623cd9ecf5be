"""Prompt-prefix reuse in the Scheduler: a second request that shares a long system prompt
decodes only its own tokens (Stats and serve's usage say so) and replies exactly as it does
with nothing cached (greedy, SmolLM2 Q4_1)."""

from __future__ import annotations

import pytest

from edgeds.runtime import Engine, GenerationParams
from edgeds.runtime.prefix_cache import EXACT_TAIL, common_prefix
from edgeds.runtime.scheduler import Scheduler
from edgeds.serving.server import Server
from tests.in_process_server import openai_client

SYSTEM = " ".join(f"Rule {i}: answer in one short sentence and name the rule you follow." for i in range(60))
GREEDY = GenerationParams(max_tokens=8, temperature=0.0)


def chat(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def engine(smollm2_path):
    with Engine(smollm2_path, n_ctx=256) as engine:
        yield engine


@pytest.fixture(scope="module")
def shared_len(engine) -> int:
    """Tokens the two conversations' prompts share (the system prompt and the template's start)."""
    a, _ = engine.prompt_tokens(chat("What is two plus two?"))
    b, _ = engine.prompt_tokens(chat("Name a colour."))
    n = common_prefix(a, b, len(a))
    assert 900 < n < min(len(a), len(b)) - 2
    return n


def uncached(engine, question: str):
    with Scheduler(engine, parallel=1, seq_ctx=1280) as scheduler:
        return scheduler.submit(chat(question), GREEDY).result()


def test_common_prefix():
    assert common_prefix([1, 2, 3, 4], [1, 2, 3, 5], 10) == 3
    assert common_prefix([1, 2, 3], [1, 2, 3, 4], 10) == 3
    assert common_prefix([1, 2, 3], [1, 2, 3], 2) == 2
    assert common_prefix([9, 2], [1, 2], 10) == 0
    assert common_prefix(list(range(1000)), list(range(700)) + [-1] * 300, 5000) == 700
    assert common_prefix([1], [1], 0) == 0


def test_second_request_decodes_only_its_own_tokens(engine, shared_len):
    with Scheduler(engine, parallel=2, seq_ctx=1280) as scheduler:
        first = scheduler.submit(chat("What is two plus two?"), GREEDY).result()
        second = scheduler.submit(chat("Name a colour."), GREEDY).result()
    assert first.stats.cached_tokens == 0
    assert first.stats.decoded_prompt_tokens == first.stats.prompt_tokens
    own = second.stats.prompt_tokens - shared_len
    assert second.stats.cached_tokens == min(shared_len, second.stats.prompt_tokens - EXACT_TAIL)
    assert second.stats.decoded_prompt_tokens == max(own, EXACT_TAIL)
    fresh = uncached(engine, "Name a colour.")
    assert fresh.stats.cached_tokens == 0
    assert (second.answer, second.stats.completion_tokens) == (fresh.answer, fresh.stats.completion_tokens)
    assert second.answer


@pytest.mark.slow
def test_requests_submitted_together_decode_the_shared_prefix_once(engine, shared_len):
    """Two rows sent at once: the second waits until the first has decoded the system prompt,
    then copies its KV (from another KV stream) instead of decoding it again. (Its first own
    token shares a ubatch with the first row's next token, so its bits may differ from a lone
    decode: no exact-output check here.)"""
    with Scheduler(engine, parallel=2, seq_ctx=1280) as scheduler:
        a = scheduler.submit(chat("What is two plus two?"), GREEDY)
        b = scheduler.submit(chat("Name a colour."), GREEDY)
        a, b = a.result(), b.result()
    assert a.stats.cached_tokens == 0
    assert b.stats.cached_tokens == min(shared_len, b.stats.prompt_tokens - EXACT_TAIL)
    assert b.answer


def test_serve_reports_cached_tokens(engine, shared_len):
    with Scheduler(engine, parallel=1, seq_ctx=1280) as scheduler:
        with Server(scheduler, port=0) as server:
            client = openai_client(server.url, timeout=300)
            replies = [client.chat.completions.create(model="any", messages=chat(q), max_tokens=4, temperature=0)
                       for q in ("What is two plus two?", "Name a colour.")]
            chunks = list(client.chat.completions.create(model="any", messages=chat("Name a fruit."), max_tokens=4,
                                                         temperature=0, stream=True,
                                                         stream_options={"include_usage": True}))
    assert replies[0].usage.prompt_tokens_details.cached_tokens == 0
    second = replies[1].usage
    assert second.prompt_tokens_details.cached_tokens == min(shared_len, second.prompt_tokens - EXACT_TAIL)
    streamed = [c.usage for c in chunks if c.usage][0]
    assert streamed.prompt_tokens_details.cached_tokens >= shared_len - EXACT_TAIL


class KvLog:
    """Stands in for the llama.cpp context: records what the cache asks of the KV."""

    def __init__(self):
        self.calls: list[tuple] = []

    def copy_seq(self, src: int, dst: int) -> None:
        self.calls.append(("copy", src, dst))

    def forget(self, seq: int, start: int = 0) -> None:
        self.calls.append(("forget", seq, start))


def test_placement_rules():
    from edgeds.runtime.prefix_cache import MIN_COPY_TOKENS, PrefixCache

    system = list(range(1000))
    prompt = system + [5000 + i for i in range(100)]
    kv = KvLog()
    cache = PrefixCache(kv)  # type: ignore[arg-type]
    # nothing cached: the lowest free id, whole prompt to decode
    assert cache.place(prompt, [3, 1, 2], {}, set()) == (1, 0)
    # a running sequence still decoding the shared start: wait for it
    assert cache.place(system + [7] * 100, [2, 3], {1: (prompt, 500)}, set()) is None
    # once it has: copy its KV to the lowest free id, keep the shared start
    kv.calls.clear()
    assert cache.place(system + [7] * 100, [2, 3], {1: (prompt, len(prompt))}, set()) == (2, 1000)
    assert kv.calls == [("copy", 1, 2), ("forget", 2, 1000)]
    # a sequence placed this step is no source yet (its copy is pending), and no reason to wait
    # beyond what it will hold
    assert cache.place(system + [8] * 100, [3], {1: (prompt, len(prompt)), 2: (system + [7] * 100, 1000)},
                       {1, 2}) is None
    # a finished sequence keeps its KV: reused in place, no copy
    cache.release(3, prompt)
    kv.calls.clear()
    assert cache.place(prompt, [0, 3], {}, set()) == (3, len(prompt) - EXACT_TAIL)
    assert kv.calls == [("forget", 3, len(prompt) - EXACT_TAIL)]
    # a short shared start is not worth a copy of a whole KV stream
    short = list(range(MIN_COPY_TOKENS - 1)) + [9] * 100
    kv.calls.clear()
    assert cache.place(short, [0], {1: (list(range(MIN_COPY_TOKENS - 1)) + [4] * 100, 500)}, set()) == (0, 0)
    assert kv.calls == [("forget", 0, 0)]
