"""`edgeds serve` under hostile input and load (issue 16, items 1-4): each reproduction from the
issue against the real server, as a subprocess on SmolLM2, and after each one /health answers
and a normal request still gets its reply."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.serve_process import healthy, post, serving

KEY = "sk-hostile"
DEEP_GRAMMAR = "root ::= " + "(" * 30000 + '"a"' + ")" * 30000  # segfaulted llama.cpp's parser
ENDLESS = "root ::= [a-z ] root"  # never lets the model stop: a request runs until its context is full
READ_TIMEOUT = 1.0
MAX_BODY = 1024 * 1024
PARALLEL, MAX_QUEUE = 4, 4


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    """url of `edgeds serve` on SmolLM2: 4 slots of 4096 tokens, 4 more may wait, an API key,
    1 s to send a request's head and again its body, bodies up to 1 MiB."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    options = ["--parallel", str(PARALLEL), "--max-queue", str(MAX_QUEUE), "--n-ctx", "4096", "--api-key", KEY,
               "--read-timeout", str(READ_TIMEOUT), "--max-body-bytes", str(MAX_BODY)]
    with serving(smollm2_path, log, *options) as (process, url):
        yield url, process
    assert "Traceback" not in log.read_text()


@pytest.fixture
def url(server):
    url, _ = server
    yield url
    assert healthy(url, key=KEY)  # after every hostile input: still up, still answering


def chat(content: str = "Say hi.", **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def raw(url: str, data: bytes, *, wait: float = 10.0) -> tuple[bytes, float]:
    """Send `data` on a fresh connection; (everything the server sent until it closed or `wait`
    passed, seconds until then)."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port))) as sock:
        sock.settimeout(wait)
        sock.sendall(data)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except TimeoutError:
            pass
        except ConnectionResetError:
            reply += b"<reset>"
    return reply, time.monotonic() - t0


def request(body: bytes = b"", *, key: str | None = KEY, headers: dict | None = None) -> bytes:
    """A chat completion request's bytes; a header given as None is left out."""
    head = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body)),
            **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    lines = "".join(f"{name}: {value}\r\n" for name, value in head.items() if value is not None)
    return f"POST /v1/chat/completions HTTP/1.1\r\n{lines}\r\n".encode() + body


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def json_of(reply: bytes) -> dict:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])


# -- item 1: grammars ---------------------------------------------------------------------------


@pytest.mark.parametrize("grammar, words", [
    (DEEP_GRAMMAR, "nests groups deeper than 64"),
    ('root ::= "a"{3,1}', "maximum is below the minimum"),
    ("root ::= [b-a]", "matches no character"),
    ("root ::= foo", "does not parse"),  # invalid GBNF: 400, not 500 (clients retry 500s)
], ids=["deep", "reversed-repeat", "empty-class", "invalid"])
def test_a_grammar_that_broke_llama_cpp_gets_400(url, grammar, words):
    status, body, _ = post(url, chat(grammar=grammar), key=KEY)
    assert status == 400 and body["error"]["param"] == "grammar" and words in body["error"]["message"]


def test_a_lone_surrogate_gets_400(url):
    reply, _ = raw(url, request(b'{"messages": [{"role": "user", "content": "a\\ud800"}], "max_tokens": 2}',
                                headers={"Connection": "close"}))
    assert status_of(reply) == 400 and "not valid Unicode" in json_of(reply)["error"]["message"]


def test_a_web_page_cannot_post_without_a_preflight(url):
    """A "simple" cross-site request (text/plain, a form, or no type) carries no JSON type: 415."""
    body = json.dumps(chat(grammar=DEEP_GRAMMAR)).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        reply, _ = raw(url, request(body, headers={"Content-Type": content_type}))
        assert status_of(reply) == 415 and "application/json" in json_of(reply)["error"]["message"]


# -- item 4: reading untrusted input ----------------------------------------------------------


def test_the_key_is_checked_before_the_body_is_read(url, server):
    """A 300 MiB body without the key: 401 comes before a byte of it is sent, and what is sent
    anyway is dropped, not kept (the issue saw RSS grow by 298 MiB)."""
    head = request(key=None, headers={"Content-Length": str(300 * 1024 * 1024)})
    rss = _rss_mib(server[1].pid)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.settimeout(10)
        sock.sendall(head)
        assert status_of(sock.recv(65536)) == 401
        try:
            sock.sendall(b"x" * (64 * 1024 * 1024))
        except OSError:
            pass  # the server closed after a while: it does not wait for all 300 MiB
    assert _rss_mib(server[1].pid) - rss < 32


@pytest.mark.parametrize("headers, body, status", [
    ({"Content-Length": "-1"}, b"{}", 400),
    ({"Content-Length": "abc"}, b"{}", 400),
    ({"Content-Length": "1e12"}, b"{}", 400),
    ({"Content-Length": str(10**12)}, b"{}", 413),
    ({}, b"[" * 2_000_000, 413),
    ({"Content-Length": None, "Transfer-Encoding": "chunked"}, b"ffffff\r\n" + b"x" * 100, 413),
    ({"Content-Length": None, "Transfer-Encoding": "chunked"}, b"zz\r\n", 400),
    ({"Content-Length": None}, b"", 411),
    ({"Transfer-Encoding": "chunked"}, b"0\r\n\r\n", 400),  # both lengths: a smuggling attempt
    ({}, b"[" * 100_000 + b"]" * 100_000, 400),  # nested too deeply for json: RecursionError before
], ids=["negative", "not-a-number", "float", "huge", "too-big", "chunked-too-big", "chunked-malformed",
        "no-length", "both-lengths", "deep-json"])
def test_bad_lengths_and_bodies_get_an_http_reply(url, headers, body, status):
    reply, _ = raw(url, request(body, headers=headers))
    assert status_of(reply) == status
    assert json_of(reply)["error"]["message"]


def test_a_chunked_body_is_read(url):
    body = json.dumps(chat()).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    reply, _ = raw(url, request(chunked, headers={"Content-Length": None, "Transfer-Encoding": "chunked",
                                                  "Connection": "close"}), wait=120)
    assert status_of(reply) == 200 and json_of(reply)["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_short_body_times_out_with_408(url):
    body = json.dumps(chat()).encode()
    reply, seconds = raw(url, request(body[:10], headers={"Content-Length": str(len(body))}))
    assert status_of(reply) == 408 and seconds < READ_TIMEOUT + 4


@pytest.mark.slow
def test_partial_headers_and_a_slow_drip_are_cut_off(url):
    reply, seconds = raw(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    assert reply == b"" and seconds < READ_TIMEOUT + 4  # closed, no thread left waiting
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port))) as sock:  # one byte every 0.2 s never ends the head
        try:
            for byte in request(json.dumps(chat()).encode()):
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
        except OSError:
            pass
    assert time.monotonic() - t0 < READ_TIMEOUT + 4


# -- items 2 and 3: slots, the queue, clients that hang up ---------------------------------------


def _start(url: str, body: dict, *, stream: bool) -> socket.socket:
    """A request on an open connection, its reply not read."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(request(json.dumps({**body, "stream": stream}).encode()))
    return sock


def _timed(url: str) -> float:
    t0 = time.monotonic()
    status, _, _ = post(url, chat(), key=KEY, timeout=300)
    assert status == 200
    return time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_client_that_hangs_up_frees_its_slot(url, stream):
    """On a server whose slots all run endless requests, the clients hang up after 0.5 s: the
    next small request takes about as long as on an idle server (the issue: 265 s, not 1.6 s)."""
    alone = _timed(url)
    sockets = [_start(url, chat(grammar=ENDLESS, max_tokens=100000), stream=stream) for _ in range(PARALLEL)]
    time.sleep(0.5)
    for sock in sockets:
        sock.close()
    assert _timed(url) < 10 * alone + 10  # with its slot held, an endless request runs 4000 tokens


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after(url):
    """All slots and queue places taken by endless streams: one more request gets 503 at once.
    When the waiting clients hang up, their places come free while the slots still run."""
    endless = chat(grammar=ENDLESS, max_tokens=100000)
    running = [_start(url, endless, stream=True) for _ in range(PARALLEL)]
    waiting: list[socket.socket] = []
    try:
        _admitted(running)  # a stream's head comes once it is admitted, running or waiting
        waiting += [_start(url, endless, stream=True) for _ in range(MAX_QUEUE)]
        _admitted(waiting)
        status, body, headers = post(url, chat(), key=KEY)
        assert status == 503 and body["error"]["code"] == "server_busy" and int(headers["Retry-After"]) >= 1
        for sock in waiting:
            sock.close()
        deadline = time.monotonic() + 30
        while True:
            waiting = [_start(url, endless, stream=True)]
            waiting[0].settimeout(60)
            if waiting[0].recv(12) == b"HTTP/1.1 200":
                break
            assert time.monotonic() < deadline, "the places of the clients that left never came free"
            waiting[0].close()
            time.sleep(0.5)
    finally:
        for sock in running + waiting:
            sock.close()


def _admitted(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.settimeout(60)
        assert sock.recv(12) == b"HTTP/1.1 200"


@pytest.mark.slow
def test_64_concurrent_clients_all_get_a_reply(url):
    """The issue's load: 20 clients at once got connection resets (a listen backlog of 5). Here
    64 clients at once on 4 slots: each gets 200, or 503 with Retry-After; none is reset."""
    results: list[tuple[int, dict]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(64)

    def client(n: int) -> None:
        try:
            start.wait()
            status, _, headers = post(url, chat(f"Name a colour, {n}.", max_tokens=8), key=KEY, timeout=240)
            results.append((status, headers))
        except BaseException as err:  # noqa: BLE001 - every failure is reported below
            errors.append(err)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors[:3]
    assert len(results) == 64
    assert all(status == 200 or (status == 503 and int(headers["Retry-After"]) >= 1) for status, headers in results)
    assert any(status == 200 for status, _ in results)


@pytest.mark.slow
def test_batch_retries_the_busy_server_and_writes_every_row(url, tmp_path):
    """`edgeds batch --endpoint --parallel 12` on a server where 4 requests run and 4 wait: the
    503s are retried, never written as a row's result, so every row gets its answer."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": f"Name a colour, {i}.", "max_tokens": 8}) + "\n"
                           for i in range(12)))
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "edgeds", "batch", str(src), "-o", str(out), "--endpoint", url,
                           "--api-key", KEY, "--parallel", "12", "--retries", "40", "--json-summary"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["completed"], summary["errors"], summary["unfinished"]) == (12, 0, 0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == list(range(12)) and all(row["error"] is None for row in rows)


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("needs /proc to read the server's memory")
    kib = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
    return kib / 1024
