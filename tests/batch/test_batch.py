"""`edgeds batch` on the real engine: ordering, per-row errors, resume after SIGKILL, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeds.serving.batch import OrderedWriter, iter_jsonl, run_batch
from edgeds.cli import main
from edgeds.runtime import Engine, GenerationParams
from edgeds.runtime.scheduler import Scheduler
from tests.conftest import REPO, THINK_GRAMMAR

TOPICS = ["rivers", "owls", "bread", "comets", "violins", "deserts", "glaciers", "tigers", "maps", "tea"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def cli(args: list[str]) -> None:
    """Run the CLI in-process; a clean exit is fine."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def smol_engine(smollm2_path):
    with Engine(smollm2_path, n_ctx=256) as engine:
        yield engine


@pytest.mark.slow
def test_rows_in_input_order_with_per_row_errors(smollm2_path, tmp_path, capsys):
    rows = [
        {"id": "first", "prompt": "Write one long sentence about rivers.", "max_tokens": 40},
        {"id": "short", "prompt": "Say yes.", "max_tokens": 2},
        "{not json",
        {"id": "typo", "promt": "x"},
        {"id": "wrongtype", "prompt": "x", "temperature": "hot"},
        {"prompt": "Name a city.", "max_tokens": 8, "seed": 4},  # id becomes the line number
        {"id": "both", "prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {"id": "chat", "system": "Be brief.", "messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 8},
        {"id": "badrole", "messages": [{"role": "robot", "content": "b"}]},
        {"id": "long", "prompt": "word " * 600},
        {"id": "first", "prompt": "repeated id"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    cli(["batch", str(src), "-o", str(out), "--model", str(smollm2_path), "--parallel", "3",
          "--n-ctx", "512", "--seed", "1", "--json-summary"])
    summary = json.loads(capsys.readouterr().out)
    got = lines_of(out)
    assert [r["id"] for r in got] == ["first", "short", 3, "typo", "wrongtype", 6, "both", "chat", "badrole", "long", "first"]
    assert summary["completed"] == 4 and summary["errors"] == 7 and summary["rows"] == 11
    by_line = dict(enumerate(got, start=1))
    assert by_line[3]["error"].startswith("line 3: not valid JSON")
    assert "line 4" in by_line[4]["error"] and "'promt'" in by_line[4]["error"]
    assert "line 5" in by_line[5]["error"] and "'temperature'" in by_line[5]["error"]
    assert "line 7" in by_line[7]["error"] and "exactly one of" in by_line[7]["error"]
    assert "line 9" in by_line[9]["error"] and "messages[0]" in by_line[9]["error"]
    assert "line 10" in by_line[10]["error"] and "'prompt'" in by_line[10]["error"] and "512" in by_line[10]["error"]
    assert "line 11" in by_line[11]["error"] and "line 1" in by_line[11]["error"]
    for row in (by_line[1], by_line[2], by_line[6], by_line[8]):
        assert row["error"] is None and row["answer"] and row["reasoning"] == ""
        assert row["finish_reason"] in ("stop", "length")
        assert row["usage"]["prompt_tokens"] > 5 and row["usage"]["reasoning_tokens"] == 0
        assert row["timing"]["ttft_s"] > 0
    assert by_line[2]["usage"]["answer_tokens"] <= 2
    assert by_line[1]["usage"]["answer_tokens"] > by_line[2]["usage"]["answer_tokens"]
    assert not out.with_name("out.jsonl.pending").exists()


@pytest.mark.slow
def test_same_seed_same_rows_whatever_parallel(smol_engine, tmp_path):
    rows = [{"id": i, "prompt": f"Write a sentence about {t}.", "max_tokens": 24} for i, t in enumerate(TOPICS)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    results = {}
    for parallel in (1, 4):
        out = tmp_path / f"out{parallel}.jsonl"
        with Scheduler(smol_engine, parallel=parallel, seq_ctx=256) as scheduler:
            summary = run_batch(src, out, scheduler, defaults=GenerationParams(seed=11), parallel=parallel)
        assert summary.completed == len(rows)
        results[parallel] = [(r["id"], r["answer"], r["usage"]) for r in lines_of(out)]
    assert [r[0] for r in results[1]] == list(range(len(rows)))
    assert len({r[1] for r in results[1]}) > 1  # the rows really differ
    assert results[1] == results[4]  # sampled at the default temperature 0.6, same seed


@pytest.mark.slow
def test_resume_after_sigkill(smollm2_path, tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"Write a long story about {TOPICS[i % len(TOPICS)]} number {i}.",
             "max_tokens": 24} for i in range(24)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "edgeds", "batch", str(src), "-o", str(out), "--model", str(smollm2_path),
           "--parallel", "3", "--n-ctx", "256", "--seed", "5", "--json-summary"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    before = [json.loads(line) for line in complete.splitlines()]
    assert 4 <= len(before) < len(rows)
    assert [r["id"] for r in before] == [f"r{i}" for i in range(len(before))]  # a prefix, in order
    journal = out.with_name("out.jsonl.pending")
    journaled = [json.loads(line)["row"] for line in journal.read_bytes().splitlines()] if journal.exists() else []
    with open(out, "ab") as f:  # what a kill in the middle of a write leaves behind
        f.write(b'{"id": "r99", "reasoning": "", "ans')

    done = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert summary["skipped"] == len(before)
    assert summary["completed"] == len(rows) - len(before)
    after = lines_of(out)  # every line parses: the torn one is gone
    assert [r["id"] for r in after] == [r["id"] for r in rows]  # nothing lost, nothing twice, in order
    assert after[: len(before)] == before
    for row in journaled:  # finished out of order before the kill: kept, not redone
        assert row in after
    assert all(r["error"] is None and r["answer"] for r in after)
    assert not journal.exists()


@pytest.mark.slow
def test_reasoning_rows_on_the_r1_tokenizer(tiny_r1_gguf, tmp_path, capsys):
    grammar = tmp_path / "think.gbnf"
    grammar.write_text(THINK_GRAMMAR)
    rows = [{"id": i, "prompt": f"Question {i}?", "max_tokens": 80} for i in range(5)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    cli(["batch", str(src), "-o", str(out), "--model", str(tiny_r1_gguf), "--parallel", "2",
          "--n-ctx", "512", "--grammar", str(grammar), "--seed", "2"])
    got = lines_of(out)
    assert [r["id"] for r in got] == list(range(5))
    for row in got:
        assert row["error"] is None and row["finish_reason"] == "stop"
        assert row["reasoning"] and set(row["reasoning"]) <= set("abcdefghijklmnopqrstuvwxyz ")
        assert row["answer"] and "<think>" not in row["answer"] and "</think>" not in row["answer"]
        assert row["usage"]["reasoning_tokens"] > 0 and row["usage"]["answer_tokens"] > 0
    assert "5 ok, 0 errors" in capsys.readouterr().err


def test_overwrite_and_resume_with_nothing_left(smol_engine, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": "Say hi.", "max_tokens": 4} for i in range(3)])
    out = tmp_path / "out.jsonl"
    with Scheduler(smol_engine, parallel=2, seq_ctx=256) as scheduler:
        first = run_batch(src, out, scheduler, parallel=2)
        again = run_batch(src, out, scheduler, parallel=2)
        assert (first.completed, again.completed, again.skipped) == (3, 0, 3)
        assert len(lines_of(out)) == 3
        fresh = run_batch(src, out, scheduler, parallel=2, overwrite=True)
    assert fresh.completed == 3 and len(lines_of(out)) == 3


def test_writer_keeps_order_and_journals_early_rows(tmp_path):
    out = tmp_path / "out.jsonl"
    writer = OrderedWriter(out, overwrite=False)
    writer.expect([0, 1, 2])
    writer.put(2, {"id": "c"})
    writer.put(1, {"id": "b"})
    assert out.read_text() == ""  # nothing until row 0 is in
    journal = [json.loads(x)["row"]["id"] for x in out.with_name("out.jsonl.pending").read_text().splitlines()]
    assert journal == ["c", "b"]
    writer.put(0, {"id": "a"})
    writer.close()
    assert [r["id"] for r in iter_jsonl(out)] == ["a", "b", "c"]
    assert not out.with_name("out.jsonl.pending").exists()


def test_foreign_output_file_is_refused(smollm2_path, tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    out = tmp_path / "out.jsonl"
    out.write_text("hello\nworld\n")
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(src), "-o", str(out), "--model", str(smollm2_path)])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "out.jsonl: line 1 is not an edgeds batch row" in err and "--overwrite" in err
    assert out.read_text() == "hello\nworld\n"
