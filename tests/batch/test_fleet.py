"""`edgeds batch` over several servers (issue 12, item 5): rows spread over the servers, a row
whose server fails goes to another, a row that fails on every try gets an error row, a dead
server gets no rows until it answers again; every row written once, in input order. Scripted
fakes for the failures, and two real `edgeds serve` processes, one killed mid-run."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from edgeds.cli import main
from edgeds.errors import EdgedsError, UsageError
from edgeds.runtime import GenerationParams
from edgeds.serving import fleet as fleet_module
from edgeds.serving.batch import run_batch
from edgeds.serving.fleet import Fleet
from tests.batch.test_remote_retries import FlakyServer, rows_file, written
from tests.conftest import REPO
from tests.serve_process import serving


@pytest.fixture(autouse=True)
def quick_probes(monkeypatch):
    monkeypatch.setattr(fleet_module, "PROBE_BASE_S", 0.01)
    monkeypatch.setattr(fleet_module, "PROBE_MAX_S", 0.05)


@pytest.fixture
def fakes():
    servers: list[FlakyServer] = []

    def start(script, port: int = 0) -> FlakyServer:
        servers.append(FlakyServer(script, port))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def run(urls: list[str], src, out, *, tries: int = 3, parallel: int = 2):
    backend = Fleet(urls, parallel=parallel, tries=tries, timeout=30)
    try:
        return run_batch(src, out, backend, defaults=GenerationParams(max_tokens=8), parallel=parallel * len(urls))
    finally:
        backend.close()


def by_url(summary) -> dict[str, dict]:
    return {s["url"].removesuffix("/v1"): s for s in summary.servers}


def test_rows_of_a_failing_server_go_to_the_other(fakes, tmp_path):
    bad = fakes(lambda prompt, n: "reset")
    good = fakes(lambda prompt, n: "ok")
    out = tmp_path / "out.jsonl"
    summary = run([bad.url, good.url], rows_file(tmp_path, 12), out)
    rows = written(out)
    assert [r["id"] for r in rows] == list(range(12)) and all(r["answer"] == f"answer to q{r['id']}" for r in rows)
    assert (summary.completed, summary.errors, summary.unfinished) == (12, 0, 0)
    counts = by_url(summary)
    assert counts[good.url]["rows"] == 12 and counts[bad.url]["rows"] == 0
    assert counts[bad.url]["failed_tries"] == sum(bad.tries.values()) >= 1
    assert max(bad.tries.values()) == 1  # a row does not go back to a server it failed on
    assert counts[good.url]["tokens"] == 12 * 4 and counts[good.url]["tok_per_s"] > 0
    assert f"{good.url}/v1: 12 rows" in summary.line()


def test_rows_are_spread_over_healthy_servers(fakes, tmp_path):
    slow = lambda prompt, n: time.sleep(0.05) or "ok"  # noqa: E731 - each server needs time per row
    first, second = fakes(slow), fakes(slow)
    summary = run([first.url, second.url], rows_file(tmp_path, 16), tmp_path / "out.jsonl")
    counts = by_url(summary)
    assert counts[first.url]["rows"] + counts[second.url]["rows"] == 16
    assert counts[first.url]["rows"] >= 4 and counts[second.url]["rows"] >= 4


def test_a_row_that_fails_on_every_try_gets_an_error_row(fakes, tmp_path):
    script = lambda prompt, n: "503" if prompt == "q2" else "ok"  # noqa: E731
    one, two = fakes(script), fakes(script)
    out = tmp_path / "out.jsonl"
    summary = run([one.url, two.url], rows_file(tmp_path), out, tries=3)
    assert (summary.completed, summary.errors, summary.unfinished) == (5, 1, 0)
    rows = written(out)
    assert [r["id"] for r in rows] == list(range(6))
    assert "gave up after 3 tries" in rows[2]["error"] and "scripted 503" in rows[2]["error"]
    assert one.tries["q2"] + two.tries["q2"] == 3 and one.tries["q2"] >= 1 and two.tries["q2"] >= 1
    # the rerun retries the error row (here the servers answer it)
    fixed = fakes(lambda prompt, n: "ok")
    again = run([fixed.url, closed_port()], rows_file(tmp_path), out)
    assert (again.completed, again.retried, sorted(fixed.tries)) == (1, 1, ["q2"])
    assert [r["id"] for r in written(out)] == list(range(6)) and not any(r["error"] for r in written(out))


def test_a_refusal_is_the_rows_error_at_once(fakes, tmp_path):
    script = lambda prompt, n: "400" if prompt == "q1" else "ok"  # noqa: E731
    one, two = fakes(script), fakes(script)
    summary = run([one.url, two.url], rows_file(tmp_path), tmp_path / "out.jsonl")
    assert summary.errors == 1 and one.tries["q1"] + two.tries["q1"] == 1


def test_a_server_down_at_the_start_joins_when_it_comes_up(fakes, tmp_path):
    slow = lambda prompt, n: time.sleep(0.1) or "ok"  # noqa: E731
    good = fakes(slow)
    late_url = closed_port()
    backend = Fleet([late_url, good.url], parallel=1, timeout=30)
    try:
        late = fakes(slow, port=int(late_url.rsplit(":", 1)[1]))  # up once the batch runs
        summary = run_batch(rows_file(tmp_path, 12), tmp_path / "out.jsonl", backend, parallel=2)
    finally:
        backend.close()
    counts = by_url(summary)
    assert counts[late_url]["rows"] >= 1 and counts[late_url]["up"] is True and sum(late.tries.values()) >= 1
    assert counts[late_url]["rows"] + counts[good.url]["rows"] == 12 and summary.completed == 12


def test_a_failed_server_takes_rows_again_once_it_answers(fakes, tmp_path):
    calls = itertools.count()
    flaky = fakes(lambda prompt, n: "503" if next(calls) == 0 else time.sleep(0.05) or "ok")
    steady = fakes(lambda prompt, n: time.sleep(0.05) or "ok")
    summary = run([flaky.url, steady.url], rows_file(tmp_path, 12), tmp_path / "out.jsonl", parallel=1)
    counts = by_url(summary)
    assert counts[flaky.url]["failed_tries"] == 1 and counts[flaky.url]["rows"] >= 1
    assert summary.completed == 12 and [r["id"] for r in written(tmp_path / "out.jsonl")] == list(range(12))


def test_a_dead_server_gets_no_rows(fakes, tmp_path):
    good = fakes(lambda prompt, n: "ok")
    dead = closed_port()
    summary = run([dead, good.url], rows_file(tmp_path), tmp_path / "out.jsonl")
    counts = by_url(summary)
    assert counts[good.url]["rows"] == 6 and counts[dead]["rows"] == 0 and counts[dead]["up"] is False
    assert counts[dead]["failed_tries"] == 0 and "down" in summary.line()


def test_no_server_answers(tmp_path):
    with pytest.raises(EdgedsError, match="no server of the fleet answers"):
        Fleet([closed_port(), closed_port()])
    with pytest.raises(UsageError, match="given twice"):
        Fleet(["http://127.0.0.1:9/v1", "http://127.0.0.1:9"])


def test_rows_come_back_unfinished_when_every_server_stays_down(fakes, tmp_path, monkeypatch):
    """Both servers go away mid-run: the rows not yet answered are not written (the rerun does them)."""
    monkeypatch.setattr(fleet_module, "GIVE_UP_S", 0.3)
    one, two = fakes(lambda prompt, n: "ok"), fakes(lambda prompt, n: "ok")
    backend = Fleet([one.url, two.url], parallel=1, timeout=10)
    try:
        one.close()
        two.close()
        summary = run_batch(rows_file(tmp_path, 4), tmp_path / "out.jsonl", backend, parallel=2)
    finally:
        backend.close()
    assert (summary.completed, summary.errors, summary.unfinished) == (0, 0, 4)
    assert "no server answered" in summary.unfinished_reason


def test_the_cli_takes_several_endpoints(fakes, tmp_path, capsys):
    one, two = fakes(lambda prompt, n: "ok"), fakes(lambda prompt, n: "ok")
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as exit_:
        main(["batch", str(rows_file(tmp_path)), "-o", str(out), "--endpoint", one.url, "--endpoint", two.url,
              "--parallel", "1", "--tries", "2", "--request-timeout", "30", "--json-summary"])
    assert exit_.value.code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert [s["url"] for s in summary["servers"]] == [one.url + "/v1", two.url + "/v1"]
    assert sum(s["rows"] for s in summary["servers"]) == 6 and summary["completed"] == 6
    assert f"{one.url}/v1: " in captured.err


@pytest.mark.slow
def test_batch_over_two_edgeds_serve_one_killed_mid_run(smollm2_path, tmp_path):
    """Two `edgeds serve` on loopback; the first is killed (SIGKILL) once some rows are done. Every
    row is written exactly once, in input order, with an answer; the summary counts both servers."""
    n = 16
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"Count to {i}.", "seed": i}) + "\n"
                           for i in range(n)))
    out = tmp_path / "out.jsonl"
    # one thread each: the two servers share the cores
    options = ("--parallel", "2", "--n-ctx", "512", "--threads", "1", "--alias", "smol")
    with serving(smollm2_path, tmp_path / "a.log", *options) as (a, url_a), \
            serving(smollm2_path, tmp_path / "b.log", *options) as (b, url_b):
        with urllib.request.urlopen(url_b + "/v1/models/smol", timeout=30) as response:
            assert json.load(response)["id"] == "smol"
        batch = subprocess.Popen([sys.executable, "-m", "edgeds", "batch", str(src), "-o", str(out),
                                  "--endpoint", url_a, "--endpoint", url_b, "--parallel", "2", "--max-tokens", "16",
                                  "--json-summary", "--no-progress"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
        journal = out.with_name("out.jsonl.pending")
        done = lambda: sum(len(p.read_text().splitlines()) for p in (out, journal) if p.exists())  # noqa: E731
        deadline = time.monotonic() + 240
        while done() < 4 and batch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert batch.poll() is None, "the batch ended before the kill"
        os.kill(a.pid, signal.SIGKILL)
        stdout, stderr = batch.communicate(timeout=300)
    assert batch.returncode == 0, stderr
    rows = written(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(n)]
    assert all(r["error"] is None and r["answer"] for r in rows)
    summary = json.loads(stdout)
    counts = {s["url"]: s for s in summary["servers"]}
    assert counts[url_a + "/v1"]["failed_tries"] >= 1 and counts[url_a + "/v1"]["up"] is False  # its rows failed over
    assert counts[url_a + "/v1"]["rows"] + counts[url_b + "/v1"]["rows"] == n
    assert summary["completed"] == n and not out.with_name("out.jsonl.pending").exists()
    assert f"{url_b}/v1: " in stderr and "tok/s" in stderr
