"""`edgeds serve --draft …` as a real process, asked through the official openai client: greedy
replies, whole and streamed, from several requests in flight at once, are the same as those of
`edgeds serve` without a draft (a requantized SmolLM2 as draft model, and prompt lookup), and so
are seeded sampled choices (`n` 2)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.in_process_server import openai_client
from tests.serve_process import serving
from tests.test_speculative import smol_requant  # noqa: F401 - the draft model fixture

PROMPTS = ["Count from 1 to 12.", "Name three colours.",
           "Repeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog."]
OPTIONS = ("--parallel", "3", "--n-ctx", "512", "--threads", "1")
EVERY_STEP = ("--draft-max", "4")  # draft on every step, whether or not drafting pays on this machine


def replies(url: str) -> list[tuple]:
    """(content, finish_reason, completion tokens, streamed content) of each prompt, asked at once."""
    client = openai_client(url, timeout=300)
    request = dict(model="any", max_tokens=32, temperature=0)

    def ask(prompt: str) -> tuple:
        messages = [{"role": "user", "content": prompt}]
        choice, usage = (reply := client.chat.completions.create(messages=messages, **request)).choices[0], reply.usage
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            messages=messages, stream=True, **request) if chunk.choices)
        return choice.message.content, choice.finish_reason, usage.completion_tokens, streamed

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        greedy = list(pool.map(ask, PROMPTS))
    # seeded sampling too: each verified position is drawn through the request's own sampler
    # chain, one draw per token, so the same seed gives the same choices
    sampled = client.chat.completions.create(messages=[{"role": "user", "content": PROMPTS[0]}], n=2, seed=5,
                                             temperature=0.8, max_tokens=24, model="any")
    return greedy + [tuple(c.message.content for c in sampled.choices)]


@pytest.mark.slow
def test_serve_with_a_draft_process_answers_like_without(smollm2_path, smol_requant, tmp_path):  # noqa: F811
    with serving(smollm2_path, tmp_path / "plain.log", *OPTIONS) as (_, url):
        want = replies(url)
    assert all(content and content == streamed for content, _, _, streamed in want[:-1])
    assert want[-1][0] != want[-1][1]  # the two choices were sampled apart
    # the draft model as a process; ngram drafts through serve are in test_speculative_cli (in process)
    log = tmp_path / "draft.log"
    with serving(smollm2_path, log, *OPTIONS, "--draft", str(smol_requant), *EVERY_STEP) as (_, url):
        assert f"drafts: {smol_requant.name}" in log.read_text()
        assert replies(url) == want


@pytest.mark.slow
def test_tiny_r1_serve_process_and_batch_with_a_draft(tiny_r1_gguf, tmp_path, capsys):
    """The R1 path (think prefix, reasoning split) with the model as its own draft: the served
    replies (content and reasoning_content) and the batch rows (`--parallel 4`) are the same."""
    from tests.cli_helpers import cli

    prompts = ["Hi", "Count from 1 to 12.", "Say hello.", "Name three colours.", "What is 7 times 8?"]
    greedy = ["--temperature", "0", "--max-tokens", "24", "--threads", "1", "--repeat-penalty", "1.0"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    rows = []
    for extra in ([], ["--draft", str(tiny_r1_gguf), *EVERY_STEP]):
        out = tmp_path / f"out{len(rows)}.jsonl"
        code, _, err = cli(["batch", src, "-o", out, "--model", tiny_r1_gguf, "--parallel", "4", "--n-ctx", "512",
                            *greedy, *extra], capsys)
        assert code == 0, err
        rows.append([(r["id"], r["reasoning"], r["answer"], r["usage"]["reasoning_tokens"])
                     for r in map(json.loads, out.read_text().splitlines())])
    assert rows[1] == rows[0] and any(reasoning for _, reasoning, _, _ in rows[0])

    def ask(url: str) -> list[tuple]:
        client = openai_client(url, timeout=300)
        with ThreadPoolExecutor(3) as pool:
            replies = pool.map(lambda p: client.chat.completions.create(
                model="any", messages=[{"role": "user", "content": p}], max_tokens=24, temperature=0,
                extra_body={"repeat_penalty": 1.0}).choices[0], prompts[:3])
            return [(c.message.content, c.message.model_extra.get("reasoning_content"), c.finish_reason)
                    for c in replies]

    with serving(tiny_r1_gguf, tmp_path / "plain.log", *OPTIONS) as (_, url):
        want = ask(url)
    with serving(tiny_r1_gguf, tmp_path / "draft.log", *OPTIONS, "--draft", str(tiny_r1_gguf), *EVERY_STEP) as (_, url):
        assert ask(url) == want
    assert any(reasoning for _, reasoning, _ in want)
