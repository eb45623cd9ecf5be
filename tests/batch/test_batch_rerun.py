"""`edgeds batch` reruns and row metadata, written the way a first-day user met them (issue 11):
after fixing the bad input lines a rerun said "10 already done" and kept the stale error rows,
and a row could not carry its own fields through to its output row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeds.runtime import Engine
from edgeds.runtime.scheduler import Scheduler
from edgeds.serving.batch import REWRITE_SUFFIX, run_batch
from tests.conftest import REPO

TOPICS = ["rivers", "owls", "bread", "comets", "violins", "deserts", "glaciers", "tigers", "maps", "tea"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def scheduler(smollm2_path):
    with Engine(smollm2_path, n_ctx=512) as engine, Scheduler(engine, parallel=2, seq_ctx=256) as scheduler:
        yield scheduler


def test_rerun_after_fixing_bad_lines_retries_their_error_rows(scheduler, tmp_path):
    bad = [
        {"id": "r0", "prompt": "Say hi.", "max_tokens": 4},
        {"id": "r1", "promt": "Name a bird.", "max_tokens": 4},  # typo
        {"id": "r2", "prompt": "Name a fish.", "max_tokens": 4},
        '{"id": "r3", "prompt": "Name a tree.", "max_tokens": 4',  # not JSON: its id is its line number, 4
        {"id": "r4", "prompt": "Name a city.", "max_tokens": 4},
        {"id": "r5", "prompt": "Name a river.", "max_tokens": 4, "temperature": "hot"},
        {"id": "r0", "prompt": "Say hi again."},  # a repeated id: an error row every time
    ]
    src = write_jsonl(tmp_path / "in.jsonl", bad)
    out = tmp_path / "out.jsonl"
    first = run_batch(src, out, scheduler, parallel=2)
    assert (first.completed, first.errors) == (3, 4)
    before = out.read_bytes()
    kept = {row["id"]: row for row in lines_of(out) if not row["error"]}
    assert set(kept) == {"r0", "r2", "r4"}

    # --no-retry-errors: the old behaviour, nothing to do
    again = run_batch(src, out, scheduler, parallel=2, retry_errors=False)
    assert (again.completed, again.errors, again.skipped, again.retried) == (0, 0, 7, 0)
    assert out.read_bytes() == before

    fixed = [dict(bad[0]), {"id": "r1", "prompt": "Name a bird.", "max_tokens": 4}, dict(bad[2]),
             {"id": "r3", "prompt": "Name a tree.", "max_tokens": 4}, dict(bad[4]),
             {"id": "r5", "prompt": "Name a river.", "max_tokens": 4, "temperature": 0.5}, bad[6]]
    write_jsonl(src, fixed)
    rerun = run_batch(src, out, scheduler, parallel=2)
    assert (rerun.completed, rerun.errors, rerun.skipped, rerun.retried) == (3, 0, 4, 2)  # r1, r5 retried; r3 new
    assert "2 error rows of an earlier run retried" in rerun.line()
    rows = lines_of(out)
    assert [row["id"] for row in rows] == ["r0", "r1", "r2", "r3", "r4", "r5", "r0"]  # input order, stale id 4 gone
    assert all(row["error"] is None and row["answer"] for row in rows[:-1])
    assert "repeats the id of line 1" in rows[-1]["error"]  # still there, once
    assert [row for row in rows if row["id"] in kept and not row["error"]] == list(kept.values())  # untouched
    assert not out.with_name(out.name + REWRITE_SUFFIX).exists()

    done = run_batch(src, out, scheduler, parallel=2)
    assert (done.completed, done.errors, done.skipped, done.retried) == (0, 0, 7, 0)


def test_metadata_rides_along_and_unknown_keys_are_still_errors(scheduler, tmp_path):
    rows = [
        {"id": 1, "prompt": "Say hi.", "max_tokens": 4, "metadata": {"topic": "greeting", "expected": ["hi", "hello"]}},
        {"id": 2, "prompt": "Say hi.", "max_tokens": 4, "topic": "greeting"},  # a field of its own, not under metadata
        {"id": 3, "promt": "Say hi.", "metadata": {"topic": "typo"}},
        {"id": 4, "prompt": "Say hi.", "metadata": "greeting"},
        {"id": 5, "prompt": "Say hi.", "max_tokens": 4},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    summary = run_batch(src, out, scheduler, parallel=2)
    assert (summary.completed, summary.errors) == (2, 3)
    got = {row["id"]: row for row in lines_of(out)}
    assert got[1]["metadata"] == {"topic": "greeting", "expected": ["hi", "hello"]} and got[1]["answer"]
    assert "unknown key 'topic'" in got[2]["error"] and "under 'metadata'" in got[2]["error"]
    assert "unknown key 'promt'" in got[3]["error"] and got[3]["metadata"] == {"topic": "typo"}  # kept on errors too
    assert "key 'metadata' must be a JSON object, not a string" in got[4]["error"] and "metadata" not in got[4]
    assert "metadata" not in got[5]


@pytest.mark.slow
def test_sigkill_during_a_retrying_rerun_loses_nothing(smollm2_path, tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"Write a long story about {TOPICS[i % len(TOPICS)]} number {i}.",
             "max_tokens": 24} for i in range(16)]
    broken = [{**row, "temperature": "hot"} if i % 2 else row for i, row in enumerate(rows)]
    src = write_jsonl(tmp_path / "in.jsonl", broken)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "edgeds", "batch", str(src), "-o", str(out), "--model", str(smollm2_path),
           "--parallel", "2", "--n-ctx", "256", "--seed", "5", "--json-summary"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, capture_output=True, env=env, timeout=300, check=True)
    first = lines_of(out)
    good = [row for row in first if not row["error"]]
    assert len(good) == 8 and len(first) == 16

    write_jsonl(src, rows)  # the bad lines fixed
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        written = out.read_bytes().splitlines()
        if len(written) >= 10 and b'"error": null' in written[-1] and all(b'"error": null' in w for w in written):
            break  # the error rows are gone and retried rows are coming in
        time.sleep(0.02)
    assert proc.poll() is None, "the rerun ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    data = out.read_bytes()
    mid = [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]  # a torn last write aside
    assert all(row["error"] is None for row in mid)
    assert [row for row in mid if row["id"] in {g["id"] for g in good}] == good  # nothing finished was lost
    done = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    after = lines_of(out)
    assert [row["id"] for row in after] == [row["id"] for row in rows]  # all, once each, in input order
    assert all(row["error"] is None and row["answer"] for row in after)
    assert [row for row in after if row["id"] in {g["id"] for g in good}] == good
    assert not out.with_name(out.name + REWRITE_SUFFIX).exists()
