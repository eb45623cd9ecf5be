"""Every backend (the Engine, the Scheduler, a remote OpenAI-compatible server) yields the same
events and fails the same way: a request it refuses raises EdgedsError before generating; a
failure after the start ends the stream with Done(finish_reason="error")."""

from __future__ import annotations

import pytest

from edgeds.errors import EdgedsError
from edgeds.events import Answer, Done, Reasoning, collect
from edgeds.runtime import Engine, GenerationParams
from edgeds.runtime.scheduler import Scheduler
from edgeds.serving.remote import RemoteBackend
from edgeds.serving.server import Server

HELLO = [{"role": "user", "content": "Say hello to the sea."}]
GREEDY = GenerationParams(max_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def backends(smollm2_path):
    """name → backend, all over one SmolLM2 file; the remote one talks to `edgeds serve`."""
    engine = Engine(smollm2_path, n_ctx=256)
    served_engine = Engine(smollm2_path, n_ctx=256)
    scheduler = Scheduler(served_engine, parallel=2, seq_ctx=256)
    with Server(scheduler, port=0) as server:
        remote = RemoteBackend(server.url, parallel=1)
        yield {"engine": engine, "scheduler": scheduler, "remote": remote, "url": server.url}
        remote.close()
    scheduler.close()
    served_engine.close()
    engine.close()


@pytest.mark.parametrize("name", ["engine", "scheduler", "remote"])
def test_same_events(backends, name):
    events = list(backends[name].generate(HELLO, GREEDY))
    assert isinstance(events[-1], Done) and sum(isinstance(e, Done) for e in events) == 1
    assert all(isinstance(e, (Reasoning, Answer)) for e in events[:-1])
    stats = events[-1].stats
    assert stats.finish_reason in ("stop", "length") and stats.answer_tokens > 0 and stats.prompt_tokens > 0
    reference = collect(backends["scheduler"].generate(HELLO, GREEDY))
    assert collect(events).answer == reference.answer  # one model, greedy: one text


@pytest.mark.parametrize("name", ["engine", "scheduler", "remote"])
def test_refused_request_raises(backends, name):
    too_long = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(EdgedsError, match="context|tokens"):
        list(backends[name].generate(too_long, GREEDY))
    with pytest.raises(EdgedsError, match="role"):
        list(backends[name].generate([{"role": "robot", "content": "x"}], GREEDY))


@pytest.mark.parametrize("name", ["engine", "scheduler", "remote"])
def test_failure_after_the_start_ends_with_done_error(backends, name, monkeypatch):
    """llama_decode failing mid-generation (simulated: the context's decode raises on its third
    call) reaches every caller as a Done with the error, never as a hang or a traceback."""
    ctx = backends["engine"].ctx if name == "engine" else backends["scheduler"].ctx
    calls = {"n": 0}
    real_decode, real_one = ctx.decode, getattr(ctx, "decode_one")

    def failing(real):
        def decode(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] >= 3:
                raise RuntimeError("llama_decode failed with code -3")
            return real(*args, **kwargs)
        return decode

    monkeypatch.setattr(ctx, "decode", failing(real_decode))
    monkeypatch.setattr(ctx, "decode_one", failing(real_one))
    events = list(backends[name].generate(HELLO, GREEDY))
    monkeypatch.undo()
    done = events[-1]
    assert isinstance(done, Done) and done.stats.finish_reason == "error"
    assert "llama_decode failed" in done.stats.error
    after = collect(backends[name].generate(HELLO, GREEDY))  # and the backend still works
    assert after.stats.finish_reason in ("stop", "length") and after.answer


def test_run_targets_an_endpoint(backends, capsys):
    """`edgeds run --endpoint URL` prints the same events as it does for a local model."""
    import json

    from edgeds.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "any", "Say hello to the sea.", "--endpoint", backends["url"], "--json",
              "--temperature", "0", "--max-tokens", "24"])
    assert exit_.value.code in (0, None)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["type"] == "done" and events[-1]["stats"]["finish_reason"] in ("stop", "length")
    answer = "".join(e["text"] for e in events if e["type"] == "answer")
    assert answer == collect(backends["engine"].generate(HELLO, GREEDY)).answer


def test_remote_forwards_response_format_as_given(backends, monkeypatch):
    """A row's response_format reaches the server as OpenAI's field (vLLM and others take no
    GBNF `grammar`), and the server's own compilation of it constrains the reply."""
    import json

    from edgeds.runtime.request import sampling_params

    schema = {"type": "object", "properties": {"sea": {"type": "string", "maxLength": 12}}, "required": ["sea"]}
    given = {"type": "json_schema", "json_schema": {"name": "greeting", "strict": True, "schema": schema}}
    params = sampling_params({"response_format": given, "max_tokens": 40, "temperature": 0})
    assert params.grammar and json.loads(params.response_format) == given
    remote = backends["remote"]
    sent = []
    real_open = type(remote)._open
    monkeypatch.setattr(type(remote), "_open", lambda self, path, body=None: (sent.append(body), real_open(self, path, body))[1])
    reply = collect(remote.generate(HELLO, params))
    assert sent[-1]["response_format"] == given and "grammar" not in sent[-1]
    assert reply.stats.finish_reason == "stop" and set(json.loads(reply.answer)) == {"sea"}
    assert reply.answer == collect(backends["scheduler"].generate(HELLO, params)).answer
    plain = sampling_params({"grammar": 'root ::= "sea"', "max_tokens": 4, "temperature": 0})
    assert plain.response_format is None
    assert collect(remote.generate(HELLO, plain)).answer == "sea" and sent[-1]["grammar"] == 'root ::= "sea"'


def test_run_sends_its_json_schema_as_response_format(backends, capsys, monkeypatch, tmp_path):
    import json

    from edgeds.cli import main

    schema = {"type": "object", "properties": {"sea": {"type": "string", "maxLength": 12}}, "required": ["sea"]}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    sent = []
    real_open = RemoteBackend._open
    monkeypatch.setattr(RemoteBackend, "_open", lambda self, p, body=None: (sent.append(body), real_open(self, p, body))[1])
    with pytest.raises(SystemExit) as exit_:
        main(["run", "any", "Say hello to the sea.", "--endpoint", backends["url"], "--json", "--temperature", "0",
              "--max-tokens", "40", "--json-schema", str(path)])
    assert exit_.value.code in (0, None)
    assert sent[-1]["response_format"] == {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert set(json.loads("".join(e["text"] for e in events if e["type"] == "answer"))) == {"sea"}
