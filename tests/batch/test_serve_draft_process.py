"""`edgeds serve --draft …` as a real process, asked through the official openai client: greedy
replies, whole and streamed, from several requests in flight at once, are the same as those of
`edgeds serve` without a draft (a requantized SmolLM2 as draft model, and prompt lookup)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.serve_process import serving
from tests.test_speculative import smol_requant  # noqa: F401 - the draft model fixture

PROMPTS = ["Count from 1 to 12.", "Name three colours.",
           "Repeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog."]
OPTIONS = ("--parallel", "3", "--n-ctx", "512", "--threads", "1")


def replies(url: str) -> list[tuple]:
    """(content, finish_reason, completion tokens, streamed content) of each prompt, asked at once."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    request = dict(model="any", max_tokens=32, temperature=0)

    def ask(prompt: str) -> tuple:
        messages = [{"role": "user", "content": prompt}]
        choice, usage = (reply := client.chat.completions.create(messages=messages, **request)).choices[0], reply.usage
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            messages=messages, stream=True, **request) if chunk.choices)
        return choice.message.content, choice.finish_reason, usage.completion_tokens, streamed

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(ask, PROMPTS))


@pytest.mark.slow
def test_serve_with_a_draft_process_answers_like_without(smollm2_path, smol_requant, tmp_path):  # noqa: F811
    with serving(smollm2_path, tmp_path / "plain.log", *OPTIONS) as (_, url):
        want = replies(url)
    assert all(content and content == streamed for content, _, _, streamed in want)
    for draft in (str(smol_requant), "ngram"):
        log = tmp_path / "draft.log"
        with serving(smollm2_path, log, *OPTIONS, "--draft", draft) as (_, url):
            assert f"drafts: {smol_requant.name if draft != 'ngram' else 'ngram'}" in log.read_text()
            assert replies(url) == want, draft
