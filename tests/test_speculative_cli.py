"""--draft through the front ends (run, batch --parallel 4, serve), its errors, the registry's
default drafts, the placement's draft term and the chat header."""

from __future__ import annotations

import json
import threading

import pytest

from edgeds.catalog.registry import load_registry
from edgeds.catalog.resolve import ResolvedModel
from edgeds.errors import EdgedsError
from edgeds.loader import draft_path, open_scheduler
from edgeds.runtime.params import GenerationParams
from tests.cli_helpers import cli

PROMPT = "Count from 1 to 12."
GREEDY = ["--temperature", "0", "--max-tokens", "24", "--threads", "1"]
EVERY_STEP = ["--draft-max", "4"]  # draft on every step, whether or not drafting pays on this machine


def done_stats(stdout: str) -> dict:
    events = [json.loads(line) for line in stdout.splitlines()]
    return next(e["stats"] for e in events if e["type"] == "done")


def answer_of(stdout: str) -> str:
    return "".join(json.loads(line).get("text", "") for line in stdout.splitlines())


# -- run ------------------------------------------------------------------------------------


@pytest.mark.parametrize("draft", ["self", "ngram"])
def test_run_with_a_draft_gives_the_same_answer(smollm2_path, capsys, draft):
    code, plain, _ = cli(["run", smollm2_path, PROMPT, "--json", *GREEDY], capsys)
    assert code == 0
    spec_arg = str(smollm2_path) if draft == "self" else "ngram"
    code, fast, err = cli(["run", smollm2_path, PROMPT, "--json", *GREEDY, "--draft", spec_arg, *EVERY_STEP], capsys)
    assert code == 0, err
    assert answer_of(fast) == answer_of(plain)
    stats, base = done_stats(fast), done_stats(plain)
    assert base["draft_tokens"] == 0 and base["accepted_tokens"] == 0
    assert stats["draft_tokens"] > 0 and 0 <= stats["accepted_tokens"] <= stats["draft_tokens"]
    assert stats["answer_tokens"] == base["answer_tokens"]


def test_run_tiny_r1_with_itself_as_draft(tiny_r1_gguf, capsys):
    """The R1 path: think prefix, reasoning split; the same events with a draft."""
    args = ["run", tiny_r1_gguf, PROMPT, "--json", *GREEDY, "--repeat-penalty", "1.0"]
    code, plain, _ = cli(args, capsys)
    code2, fast, err = cli([*args, "--draft", tiny_r1_gguf, *EVERY_STEP], capsys)
    assert code == code2 == 0, err
    strip = lambda out: [(e["type"], e.get("text")) for e in map(json.loads, out.splitlines()) if e["type"] != "done"]  # noqa: E731
    assert strip(fast) == strip(plain) and any(kind == "reasoning" for kind, _ in strip(plain))
    stats = done_stats(fast)
    assert stats["draft_tokens"] > 0 and stats["accepted_tokens"] == stats["draft_tokens"]


def test_run_stats_line_shows_acceptance(smollm2_path, capsys):
    code, out, err = cli(["run", smollm2_path, PROMPT, "-v", *GREEDY, "--draft", smollm2_path, "--draft-max", "4"], capsys)
    assert code == 0
    assert "accepted (" in err and "draft " in err
    assert "drafts: " + smollm2_path.name in err  # the placement line names the draft


def test_draft_auto_without_a_registry_draft_decodes_plainly(smollm2_path, capsys):
    code, out, err = cli(["run", smollm2_path, PROMPT, "--json", *GREEDY, "--draft", "auto"], capsys)
    assert code == 0
    assert "--draft auto: the registry names no draft model" in err
    assert done_stats(out)["draft_tokens"] == 0


def test_draft_auto_never_downloads(smollm2_path, capsys):
    entry = load_registry().get("r1-distill-qwen-7b")
    assert draft_path("auto", ResolvedModel(smollm2_path, entry, "Q4_K_M"), pull=True) is None
    assert "r1-distill-qwen-1.5b:Q4_K_M is not downloaded" in capsys.readouterr().err


# -- errors ---------------------------------------------------------------------------------


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_incompatible_draft_is_one_line_error(tiny_r1_gguf, smollm2_path, capsys):
    code, _, err = cli(["run", tiny_r1_gguf, PROMPT, "--draft", smollm2_path, *GREEDY], capsys)
    one_line_error(code, err, "cannot draft for", "49152", "151936")


def test_incompatible_draft_for_serve_fails_before_serving(tiny_r1_gguf, smollm2_path, capsys):
    code, _, err = cli(["serve", tiny_r1_gguf, "--port", "0", "--draft", smollm2_path], capsys)
    one_line_error(code, err, "cannot draft for")


def test_draft_option_errors(smollm2_path, tmp_path, capsys):
    code, _, err = cli(["run", smollm2_path, PROMPT, "--draft-max", "4"], capsys)
    one_line_error(code, err, "--draft-max needs --draft")
    code, _, err = cli(["run", smollm2_path, PROMPT, "--draft", tmp_path / "missing.gguf"], capsys)
    one_line_error(code, err, "--draft", "missing.gguf")
    code, _, err = cli(["run", "some-model", PROMPT, "--endpoint", "http://127.0.0.1:9", "--draft", "ngram"], capsys)
    one_line_error(code, err, "--draft works on local models")
    code, _, err = cli(["run", smollm2_path, PROMPT, "--draft", "ngram", "--draft-max", "0"], capsys)
    assert code != 0 and "--draft-max" in err


# -- batch and serve ------------------------------------------------------------------------


@pytest.mark.slow
def test_batch_parallel_4_with_a_draft_writes_the_same_rows(smollm2_path, tmp_path, capsys):
    prompts = ["Name three colours.", PROMPT, "Write a haiku about rain.", "What is 7 times 8?", "Say hello."]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    answers, drafted = [], []
    for extra in ([], ["--draft", str(smollm2_path), *EVERY_STEP], ["--draft", "ngram", *EVERY_STEP]):
        out = tmp_path / f"out{len(answers)}.jsonl"
        code, _, err = cli(["batch", src, "-o", out, "--model", smollm2_path, "--parallel", "4", "--n-ctx", "512",
                            *GREEDY, *extra], capsys)
        assert code == 0, err
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        answers.append([(r["id"], r["answer"], r["usage"]["answer_tokens"]) for r in rows])
        drafted.append(sum(r["usage"]["draft_tokens"] for r in rows))
        assert all(0 <= r["usage"]["accepted_tokens"] <= r["usage"]["draft_tokens"] for r in rows)
    assert answers[1] == answers[0] and answers[2] == answers[0]
    assert drafted[0] == 0 and drafted[1] > 0 and drafted[2] > 0


@pytest.mark.slow
def test_serve_with_a_draft_answers_like_without(smollm2_path):
    from edgeds.serving.server import Server

    prompts = ["Name three colours.", PROMPT, "Write a haiku about rain.", "Say hello."]
    params = GenerationParams(max_tokens=24, temperature=0)
    with open_scheduler(smollm2_path, parallel=4, seq_ctx=512, n_threads=1) as plain:
        want = [plain.submit([{"role": "user", "content": p}], params).result(300).answer for p in prompts]
        plain.engine.close()
    scheduler = open_scheduler(smollm2_path, parallel=4, seq_ctx=512, n_threads=1, draft=str(smollm2_path),
                               draft_max=4)
    assert scheduler.speculation is not None and scheduler.speculation.name == smollm2_path.name
    try:
        with Server(scheduler, port=0) as server:
            got, details = ask_at_once(server, prompts)
        assert [got[i] for i in range(len(prompts))] == want
        assert scheduler.speculation.drafted > 0
        # the drafts, in the fields OpenAI counts a predicted output's tokens in
        assert sum(d["accepted_prediction_tokens"] for d in details) == scheduler.speculation.accepted
        assert sum(d["accepted_prediction_tokens"] + d["rejected_prediction_tokens"] for d in details) \
            == scheduler.speculation.drafted
    finally:
        scheduler.close()
        scheduler.engine.close()


def ask_at_once(server, prompts: list[str]) -> tuple[dict[int, str], list[dict]]:
    """The replies to `prompts` asked all at once, and their completion_tokens_details."""
    from tests.serve_process import post

    got: dict[int, str] = {}
    details: list[dict] = []

    def ask(i: int) -> None:
        status, reply, _ = post(server.url, {"messages": [{"role": "user", "content": prompts[i]}],
                                             "max_tokens": 24, "temperature": 0})
        got[i] = reply["choices"][0]["message"]["content"] if status == 200 else f"HTTP {status}: {reply}"
        details.append(reply["usage"]["completion_tokens_details"] if status == 200 else {})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return got, details


# -- registry, placement, header ------------------------------------------------------------


def test_registry_names_the_15b_as_draft_of_the_larger_qwen_distills():
    registry = load_registry()
    for size in ("7b", "14b", "32b"):
        entry = registry.get(f"r1-distill-qwen-{size}")
        assert entry.draft == "r1-distill-qwen-1.5b"
        draft = registry.get(entry.draft)
        assert abs(draft.shape.n_vocab - entry.shape.n_vocab) <= 128  # llama.cpp's rule holds
    assert registry.get("r1-distill-qwen-1.5b").draft is None


def test_registry_draft_must_name_a_registry_model(tmp_path):
    from edgeds.catalog.registry import PACKAGED_REGISTRY

    user = tmp_path / "models.toml"
    user.write_text('[models."r1-distill-qwen-7b"]\ndraft = "no-such-model"\n')
    with pytest.raises(EdgedsError, match=r"models.toml:2: entry 'r1-distill-qwen-7b': key 'draft'"):
        load_registry([PACKAGED_REGISTRY, user])


def test_placement_counts_the_draft(smollm2_path):
    from edgeds.catalog.gguf import read_gguf
    from edgeds.machine.memory import gpu_reserve
    from edgeds.machine.placement import TensorTable, plan

    table = TensorTable.from_gguf(read_gguf(smollm2_path))
    roomy = plan(table, gpu_free=4 << 30, n_ctx=2048)
    tight_gpu = roomy.gpu_bytes + gpu_reserve(table.geometry, 2048) + (1 << 20)  # it all just fits...
    alone = plan(table, gpu_free=tight_gpu, n_ctx=2048)
    with_draft = plan(table, gpu_free=tight_gpu, n_ctx=2048, extra_bytes=roomy.gpu_bytes // 2)  # ...not beside a draft
    assert alone.load_options.n_gpu_layers == roomy.load_options.n_gpu_layers
    assert with_draft.load_options.n_gpu_layers < alone.load_options.n_gpu_layers


def test_header_shows_the_acceptance_rate(smollm2_path):
    from edgeds.app.header import context_line
    from edgeds.runtime import Engine
    from edgeds.runtime.speculative import NgramDrafter, Speculation

    with Engine(smollm2_path, n_ctx=512, n_threads=1, speculation=Speculation(NgramDrafter())) as engine:
        assert context_line(engine, 128) == "draft - · ctx 128/512 (25%)"
        engine.speculation.record(engine.speculation.start(), 8, 6)
        assert context_line(engine, 128) == "draft 75% · ctx 128/512 (25%)"
