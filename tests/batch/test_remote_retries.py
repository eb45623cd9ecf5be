"""`edgeds batch --endpoint` on a server that fails in transport (issue 16, item 2): resets,
503s and replies that break off are tried again, and a row that never got its answer is not
written, so that a rerun does it (the issue: a reset became the row's final error and the rerun
said "24 already done"). The server here is a small fake that fails on a script."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgeds.cli import main
from edgeds.runtime import GenerationParams
from edgeds.serving.batch import run_batch
from edgeds.serving.remote import RemoteBackend


class FlakyServer:
    """An OpenAI-compatible fake: `script(prompt, try_number)` says what each request gets:
    "ok", "reset", "503", "broken" (one chunk, then the connection closes) or "400"."""

    def __init__(self, script, port: int = 0):
        self.script = script
        self.tries: Counter[str] = Counter()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, "application/json", json.dumps({"data": [{"id": "fake"}]}).encode())

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with lock:
                    outer.tries[prompt] += 1
                    action = outer.script(prompt, outer.tries[prompt])
                if action == "reset":  # close with SO_LINGER 0: the client sees a connection reset
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if action in ("503", "400"):
                    error = json.dumps({"error": {"message": f"scripted {action}"}}).encode()
                    self._send(int(action), "application/json", error, {"Retry-After": "0"})
                    return
                chunks = [{"choices": [{"index": 0, "delta": {"content": f"answer to {prompt}"}}]}]
                if action == "ok":
                    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
                stream = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
                self._send(200, "text/event-stream", stream + (b"data: [DONE]\n\n" if action == "ok" else b""),
                           {"Connection": "close"})
                self.close_connection = True

            def _send(self, status: int, kind: str, data: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                if kind == "application/json":
                    self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr("edgeds.serving.remote.RETRY_BASE_S", 0.01)


@pytest.fixture
def flaky():
    servers: list[FlakyServer] = []

    def start(script) -> FlakyServer:
        servers.append(FlakyServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def rows_file(tmp_path: Path, n: int = 6) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"q{i}"}) + "\n" for i in range(n)))
    return path


def written(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def batch(url: str, src: Path, out: Path, *, retries: int) -> object:
    backend = RemoteBackend(url, parallel=3, retries=retries)
    try:
        return run_batch(src, out, backend, defaults=GenerationParams(max_tokens=8), parallel=3)
    finally:
        backend.close()


@pytest.mark.parametrize("failure", ["reset", "503", "broken"])
def test_transport_failures_are_tried_again(flaky, tmp_path, failure):
    """Each row fails twice, then succeeds: every row is written once, with its answer."""
    server = flaky(lambda prompt, n: failure if n <= 2 else "ok")
    out = tmp_path / "out.jsonl"
    summary = batch(server.url, rows_file(tmp_path), out, retries=3)
    assert (summary.completed, summary.errors, summary.unfinished) == (6, 0, 0)
    rows = written(out)
    assert [r["id"] for r in rows] == list(range(6)) and all(r["answer"] == f"answer to q{r['id']}" for r in rows)
    assert set(server.tries.values()) == {3}


def test_a_row_that_keeps_failing_is_left_for_the_next_run(flaky, tmp_path):
    """Rows 1 and 4 never get through: they are reported, not written; the rerun does them and
    the output ends with every row once, in input order."""
    src, out = rows_file(tmp_path), tmp_path / "out.jsonl"
    down = flaky(lambda prompt, n: "503" if prompt in ("q1", "q4") else "ok")
    summary = batch(down.url, src, out, retries=2)
    assert (summary.completed, summary.unfinished) == (4, 2)
    assert "HTTP 503" in summary.unfinished_reason and "gave up after 3 tries" in summary.unfinished_reason
    assert "rerun the same command to retry them" in summary.line()
    assert {r["id"] for r in written(out)} | {r["row"]["id"] for r in written(out.with_name("out.jsonl.pending"))} \
        == {0, 2, 3, 5}
    assert down.tries["q1"] == 3 and down.tries["q0"] == 1
    up = flaky(lambda prompt, n: "ok")
    again = batch(up.url, src, out, retries=2)
    assert (again.errors, again.unfinished) == (0, 0)
    assert sorted(up.tries) == ["q1", "q4"]  # the rows already answered are not asked again
    assert [r["id"] for r in written(out)] == list(range(6)) and all(r["error"] is None for r in written(out))


def test_a_refused_request_is_a_final_error_row(flaky, tmp_path):
    """A 400 is the row's own fault: written as its error at once, not tried again."""
    server = flaky(lambda prompt, n: "400" if prompt == "q2" else "ok")
    out = tmp_path / "out.jsonl"
    summary = batch(server.url, rows_file(tmp_path), out, retries=3)
    assert (summary.completed, summary.errors, summary.unfinished) == (5, 1, 0)
    assert "scripted 400" in written(out)[2]["error"] and server.tries["q2"] == 1


def test_the_cli_exits_non_zero_while_rows_are_unfinished(flaky, tmp_path, capsys):
    server = flaky(lambda prompt, n: "reset")
    with pytest.raises(SystemExit) as exit_:
        main(["batch", str(rows_file(tmp_path, 2)), "-o", str(tmp_path / "out.jsonl"), "--endpoint", server.url,
              "--retries", "1"])
    assert exit_.value.code == 1
    assert "2 unfinished" in capsys.readouterr().err and server.tries["q0"] == 2
