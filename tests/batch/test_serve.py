"""`edgeds serve` through the official openai client, and `edgeds batch --endpoint` against it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from edgeds.serving.batch import run_batch
from edgeds.serving.remote import RemoteBackend
from edgeds.runtime import GenerationParams
from tests.conftest import REPO, THINK_GRAMMAR
from tests.in_process_server import openai_client, served

KEY = "sk-test-edgeds"


@pytest.fixture(scope="module")
def tiny_server(tiny_r1_gguf):
    """The tiny R1-tokenizer model behind `edgeds serve`'s server, 2 slots, with an API key."""
    with served(tiny_r1_gguf, parallel=2, seq_ctx=512, server_options={"api_key": KEY}) as server:
        yield server


@pytest.fixture(scope="module")
def smol_server(smollm2_path):
    """SmolLM2 (Q4_1) behind the server: its quantized matmuls give the same logits whatever
    runs beside a sequence, so sharing slots must not change a seeded reply."""
    with served(smollm2_path, parallel=2, seq_ctx=512) as server:
        yield server


@pytest.fixture
def client(tiny_server):
    return openai_client(tiny_server.url, api_key=KEY, timeout=60)


def think(**extra):
    return {"grammar": THINK_GRAMMAR, **extra}


def test_models_and_health(tiny_server, client):
    assert [m.id for m in client.models.list().data] == [tiny_server.model_id]
    with urllib.request.urlopen(tiny_server.url + "/health") as response:
        assert json.load(response) == {"status": "ok"}
    assert tiny_server.address[0] == "127.0.0.1"


def test_reasoning_content_split_out(client):
    reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=120, seed=3, extra_body=think())
    message = reply.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning and set(reasoning) <= set("abcdefghijklmnopqrstuvwxyz ")
    assert message.content and "think>" not in message.content + reasoning
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens_details.reasoning_tokens > 0
    assert reply.usage.completion_tokens > reply.usage.completion_tokens_details.reasoning_tokens
    assert reply.usage.prompt_tokens > 0


def test_streaming_matches_the_whole_reply(client):
    kwargs = dict(model="any", messages=[{"role": "user", "content": "Hi"}], max_tokens=120, seed=9, extra_body=think())
    whole = client.chat.completions.create(**kwargs).choices[0].message
    reasoning, content, finish, usage = [], [], None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning.append((choice.delta.model_extra or {}).get("reasoning_content") or "")
            content.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(reasoning) == whole.model_extra["reasoning_content"]
    assert "".join(content) == whole.content
    assert finish == "stop" and usage.completion_tokens > 0


def test_max_tokens_gives_length(client):
    reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=3, extra_body=think())
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3


def test_api_key_required(tiny_server):
    bad = openai_client(tiny_server.url, api_key="wrong")
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}])
    assert exc.value.status_code == 401 and exc.value.body["code"] == "invalid_api_key"
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(tiny_server.url + "/v1/models")
    assert exc.value.code == 401 and json.load(exc.value)["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "lots"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 9}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 3}, "n"),  # more choices than slots
    ({"messages": [{"role": "user", "content": "word " * 700}]}, "messages"),
])
def test_bad_requests_get_400(client, body, param):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="any", **body)
    assert exc.value.status_code == 400
    assert exc.value.body["param"] == param and exc.value.body["type"] == "invalid_request_error"
    assert exc.value.body["message"]


def test_malformed_json_gets_400(tiny_server):
    request = urllib.request.Request(tiny_server.url + "/v1/chat/completions", data=b"{nope",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request)
    assert exc.value.code == 400
    assert "not valid JSON" in json.load(exc.value)["error"]["message"]


@pytest.mark.slow
def test_two_concurrent_clients_both_finish(smol_server):
    client = openai_client(smol_server.url, timeout=60)
    results: dict[int, dict] = {}
    started = threading.Barrier(2)

    def ask(n: int) -> None:
        started.wait()
        t0 = time.perf_counter()
        pieces, finish = [], None
        for chunk in client.chat.completions.create(
                model="any", messages=[{"role": "user", "content": f"Write a story about {n} cats."}],
                max_tokens=48, seed=n, stream=True):
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        results[n] = {"answer": "".join(pieces), "finish": finish, "span": (t0, time.perf_counter())}

    threads = [threading.Thread(target=ask, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(results) == {1, 2}
    for r in results.values():
        assert r["finish"] in ("stop", "length") and r["answer"]  # neither was cut off or cancelled
    (a0, a1), (b0, b1) = results[1]["span"], results[2]["span"]
    assert a0 < b1 and b0 < a1  # they really ran at the same time
    alone = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Write a story about 1 cats."}],
                                           max_tokens=48, seed=1)
    assert alone.choices[0].message.content == results[1]["answer"]  # sharing the slots changed nothing


@pytest.mark.slow
def test_batch_through_the_endpoint_matches_the_embedded_engine(smol_server, tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"Question {i}?", "max_tokens": 80} for i in range(4)] + ["{broken"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    defaults = GenerationParams(seed=7, grammar=THINK_GRAMMAR)
    remote = RemoteBackend(smol_server.url, parallel=2)
    try:
        summary = run_batch(src, tmp_path / "remote.jsonl", remote, defaults=defaults, parallel=2)
    finally:
        remote.close()
    assert (summary.completed, summary.errors) == (4, 1)
    local = smol_server.scheduler
    run_batch(src, tmp_path / "local.jsonl", local, defaults=defaults, parallel=2)
    got = [json.loads(x) for x in (tmp_path / "remote.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert [r["id"] for r in got] == ["q0", "q1", "q2", "q3", 5]
    for g, w in zip(got, want):
        assert (g["reasoning"], g["answer"], g["error"]) == (w["reasoning"], w["answer"], w["error"])
    assert got[0]["reasoning"] and got[0]["usage"]["reasoning_tokens"] == want[0]["usage"]["reasoning_tokens"]


def split_text(content: str) -> tuple[str, str]:
    """What the remote client's whole-reply splitter makes of content with the think block left in."""
    from edgeds.events import Reasoning
    from edgeds.runtime.reasoning import ReasoningSplitter

    splitter = ReasoningSplitter(bare_close=True)
    events = splitter.feed(content) + splitter.finish()
    return ("".join(e.text for e in events if isinstance(e, Reasoning)),
            "".join(e.text for e in events if not isinstance(e, Reasoning)))


def test_split_text_for_servers_that_leave_think_in_content():
    assert split_text("<think>\nhmm\n</think>\n\nYes") == ("hmm", "Yes")
    assert split_text("hmm\n</think>\n\nYes") == ("hmm", "Yes")  # the template opened the block


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_command_and_batch_endpoint_cli(smollm2_path, tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-m", "edgeds", "serve", str(smollm2_path), "--port", str(port),
                               "--parallel", "2", "--n-ctx", "512"], stderr=subprocess.PIPE, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health")
                break
            except OSError:
                time.sleep(0.1)
        src = tmp_path / "in.jsonl"
        src.write_text("".join(json.dumps({"id": i, "prompt": f"Name a colour, {i}.", "max_tokens": 8}) + "\n"
                               for i in range(3)))
        out = tmp_path / "out.jsonl"
        done = subprocess.run([sys.executable, "-m", "edgeds", "batch", str(src), "-o", str(out),
                               "--endpoint", url, "--parallel", "2", "--json-summary"],
                              capture_output=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        assert json.loads(done.stdout)["completed"] == 3
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert [r["id"] for r in rows] == [0, 1, 2] and all(r["answer"] for r in rows)
    finally:
        server.terminate()
        server.wait(30)
    assert b"127.0.0.1" in server.stderr.read()
