"""Trap 2 of the first day: R1's reasoning on a GGUF made by llama.cpp's own converter.

The published R1-Distill GGUFs (and the fixture tokenizer) carry the original chat template, whose
generation prompt ends at <｜Assistant｜> without opening <think>. The model then writes
`Let me add them.</think>\\n\\nThe answer is 4.` and, before, every front end showed that whole as
the answer, raw tag included; a reply cut by max_tokens before </think> was an answer too.

Here a grammar makes the tiny model write each shape of reply, and each goes through
`edgeds run --json`, `edgeds batch` and `edgeds serve` (the chat app: tests/app/test_reasoning_modes.py).
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.cli_helpers import cli
from tests.conftest import THINK_GRAMMAR

pytestmark = pytest.mark.slow

# reply shape → (grammar, max_tokens, whether the reply has reasoning, an answer, stopped while thinking)
CASES = {
    "only </think>": (r'''root ::= [a-z] [a-z ]{8,30} "\n</think>\n\n" [A-Za-z] [A-Za-z ]{4,20}''', None, True, True, False),
    "cut before </think>": (r'''root ::= [a-z] [a-z ]{20,30} "\n</think>\n\n" [A-Za-z] [A-Za-z ]{4,20}''', 4, True, False, True),
    "explicit <think>": (THINK_GRAMMAR, None, True, True, False),
    "empty think block": (r'''root ::= "</think>\n\n" [A-Za-z] [A-Za-z ]{4,20}''', None, False, True, False),
}


def check_reply(case: str, reasoning: str, answer: str, finish: str, stopped: bool) -> None:
    _, _, has_reasoning, has_answer, stops = CASES[case]
    assert bool(reasoning.strip()) == has_reasoning, (case, reasoning)
    assert bool(answer.strip()) == has_answer, (case, answer)
    assert "think>" not in reasoning + answer, (case, reasoning, answer)
    assert stopped == stops
    assert finish == ("length" if stops else "stop")
    if has_answer:
        assert set(answer) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ")


@pytest.fixture(scope="module")
def grammars(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grammars")
    paths = {}
    for i, (case, (grammar, *_)) in enumerate(CASES.items()):
        paths[case] = folder / f"case{i}.gbnf"
        paths[case].write_text(grammar)
    return paths


def detokenize(engine, tokens: list[int]) -> str:
    return b"".join(engine.model.token_piece(t, special=True) for t in tokens).decode()


def test_the_published_template_does_not_open_think_so_edgeds_does(reference_r1_gguf):
    from edgeds.runtime import Engine

    with Engine(reference_r1_gguf, n_ctx=512) as engine:
        assert engine.name == "DeepSeek R1 Distill Qwen Tiny"
        messages = [{"role": "user", "content": "What is 2+2?"}]
        tokens, opens_think = engine.prompt_tokens(messages)
        assert opens_think and detokenize(engine, tokens).endswith("<｜Assistant｜><think>\n")
    with Engine(reference_r1_gguf, n_ctx=512, think_prefix=False) as plain:  # --no-think-prefix
        tokens, opens_think = plain.prompt_tokens(messages)
        assert not opens_think and detokenize(plain, tokens).endswith("<｜Assistant｜>")


@pytest.mark.parametrize("case", CASES)
def test_run_json(case, reference_r1_gguf, grammars, capsys):
    _, max_tokens, *_ = CASES[case]
    args = ["run", reference_r1_gguf, "What is 2+2?", "--json", "--grammar", grammars[case], "--seed", 1]
    code, out, err = cli(args + (["--max-tokens", max_tokens] if max_tokens else []), capsys)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    text = {kind: "".join(e["text"] for e in events if e["type"] == kind) for kind in ("reasoning", "answer")}
    stats = events[-1]["stats"]
    check_reply(case, text["reasoning"], text["answer"], stats["finish_reason"], stats["stopped_thinking"])
    kinds = [e["type"] for e in events]
    if "answer" in kinds and "reasoning" in kinds:
        assert kinds.index("answer") > max(i for i, k in enumerate(kinds) if k == "reasoning")
    assert ("edgeds: stopped while thinking: max tokens reached" in err) == CASES[case][4]


def test_run_without_the_prefix_still_splits_a_bare_close(reference_r1_gguf, grammars, capsys):
    """--no-think-prefix: the model's bare </think> still ends the reasoning, and no answer event
    comes before the reasoning is known to be reasoning."""
    code, out, err = cli(["run", reference_r1_gguf, "What is 2+2?", "--json", "--no-think-prefix",
                          "--grammar", grammars["only </think>"], "--seed", 1], capsys)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "reasoning" and set(kinds[1:-1]) == {"answer"} and kinds[-1] == "done"  # held, then at once
    answer = "".join(e["text"] for e in events[1:-1])
    check_reply("only </think>", events[0]["text"], answer, "stop", events[-1]["stats"]["stopped_thinking"])


def test_run_prints_the_answer_alone_and_says_when_it_stopped_thinking(reference_r1_gguf, grammars, capsys):
    code, out, err = cli(["run", reference_r1_gguf, "What is 2+2?", "--grammar", grammars["cut before </think>"],
                          "--max-tokens", 4], capsys)
    assert code == 0 and out == ""  # no answer on stdout
    assert err.strip().splitlines()[-1] == "edgeds: stopped while thinking: max tokens reached"


@pytest.mark.parametrize("case", CASES)
def test_batch(case, reference_r1_gguf, grammars, tmp_path, capsys):
    _, max_tokens, *_ = CASES[case]
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"id": 1, "prompt": "What is 2+2?", "seed": 1,
                                **({"max_tokens": max_tokens} if max_tokens else {})}) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = cli(["batch", rows, "-o", out, "-m", reference_r1_gguf, "--grammar", grammars[case],
                        "--parallel", 1, "--n-ctx", 512], capsys)
    assert code == 0, err
    row = json.loads(out.read_text())
    assert row["error"] is None
    check_reply(case, row["reasoning"], row["answer"], row["finish_reason"], row["stopped_thinking"])


@pytest.fixture(scope="module")
def server(reference_r1_gguf):
    from edgeds.loader import open_scheduler
    from edgeds.serving.server import Server

    with open_scheduler(reference_r1_gguf, parallel=2, seq_ctx=512) as scheduler, Server(scheduler, port=0) as server:
        yield server
    scheduler.engine.close()


def post(server, body: dict):
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=120)


@pytest.mark.parametrize("case", CASES)
def test_serve(case, server):
    grammar, max_tokens, *_ = CASES[case]
    body = {"messages": [{"role": "user", "content": "What is 2+2?"}], "grammar": grammar, "seed": 1,
            **({"max_tokens": max_tokens} if max_tokens else {})}
    with post(server, body) as response:
        choice = json.load(response)["choices"][0]
    message = choice["message"]
    check_reply(case, message["reasoning_content"] or "", message["content"], choice["finish_reason"],
                choice.get("stopped_thinking", False))
    with post(server, {**body, "stream": True}) as response:
        chunks = [json.loads(line[6:]) for line in response.read().decode().splitlines()
                  if line.startswith("data: {")]
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    reasoning = "".join(d["delta"].get("reasoning_content", "") for d in deltas)
    answer = "".join(d["delta"].get("content", "") for d in deltas)
    last = deltas[-1]
    check_reply(case, reasoning, answer, last["finish_reason"], last.get("stopped_thinking", False))
