"""`stop` and `logprobs` through `edgeds serve` and the openai client on the tiny R1-tokenizer
model, where the reply opens with a think block (closed here by the reasoning budget): both
apply to the ANSWER. A stop string split across two answer tokens cuts there; the same string
inside the reasoning does not stop it; the answer's logprobs have the greedy token on top."""

from __future__ import annotations

import pytest

from tests.batch.test_fields import _split_stop
from tests.in_process_server import openai_client, served

HI = [{"role": "user", "content": "Hi"}]
GREEDY = dict(model="any", messages=HI, max_tokens=24, temperature=0,
              extra_body={"repeat_penalty": 1.0, "reasoning_budget": 4})


@pytest.fixture(scope="module")
def client(tiny_r1_gguf):
    with served(tiny_r1_gguf, parallel=1, seq_ctx=512) as server:
        yield openai_client(server.url)


@pytest.fixture(scope="module")
def greedy(client):
    return client.chat.completions.create(logprobs=True, top_logprobs=2, **GREEDY).choices[0]


def test_answer_logprobs_top1_is_the_greedy_token(greedy):
    entries = greedy.logprobs.content
    assert len(entries) > 4
    assert all(e.top_logprobs[0].token == e.token and e.logprob <= 0 for e in entries)
    assert "".join(e.token for e in entries).strip() == greedy.message.content
    assert greedy.message.model_extra["reasoning_content"]  # the think block's tokens are not among them


def test_stop_split_across_answer_tokens(client, greedy):
    stop, before = _split_stop([e.token for e in greedy.logprobs.content])
    reasoning = greedy.message.model_extra["reasoning_content"]
    stops = [stop] + ([reasoning[:4]] if len(reasoning.strip()) >= 4 else [])  # matches only in the answer
    reply = client.chat.completions.create(stop=stops, **GREEDY).choices[0]
    assert reply.finish_reason == "stop"
    assert reply.message.content == before.strip()
    assert reply.message.model_extra["reasoning_content"] == reasoning
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        stop=stops, stream=True, **GREEDY) if c.choices)
    assert streamed == before.strip()
