"""Trap 3 of the first day: `edgeds run smol.gguf "Say hello"` with stdout to a file produced
emoji for 10 minutes: 8192 tokens by default for a GGUF the registry does not know, no
repetition control, and nothing showed progress while stdout was not a terminal.

Now such a GGUF gets 4096 tokens, min-p 0.05 and a 1.1 repeat penalty; registry models keep
their own defaults; top-k, min-p and the repeat penalty reach llama.cpp's sampler from every
front end; and `run` with stdout redirected shows a token count on a terminal's stderr.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from edgeds.catalog.registry import load_registry
from edgeds.catalog.resolve import ResolvedModel
from edgeds.events import collect
from edgeds.loader import model_defaults, open_engine
from edgeds.runtime.params import GenerationParams, ModelDefaults
from edgeds.runtime.request import RequestError, sampling_params
from edgeds.serving.batch import parse_row
from edgeds.serving.server import ApiError, parse_request


def test_unknown_gguf_defaults_stop_a_runaway(smollm2_path):
    with open_engine(smollm2_path, n_ctx=512) as engine:
        d = engine.defaults
        assert (d.max_tokens, d.min_p, d.repeat_penalty, d.temperature, d.top_p) == (4096, 0.05, 1.1, 0.6, 0.95)


def test_registry_models_keep_their_own_defaults():
    entry = load_registry().get("r1-distill-qwen-7b")
    d = model_defaults(ResolvedModel(path=None, entry=entry, quant="Q4_K_M"))
    assert (d.max_tokens, d.repeat_penalty, d.min_p, d.forces_think) == (32768, 1.0, 0.05, True)
    assert ModelDefaults().apply(GenerationParams(top_k=7, repeat_penalty=1.3)).top_k == 7


@pytest.mark.slow
def test_repeat_penalty_reaches_the_sampler(smollm2_path):
    """Greedy decoding of a prompt that invites repetition: the penalty changes the text and
    lowers the share of repeated tokens."""
    from edgeds.runtime import Engine

    prompt = [{"role": "user", "content": "Write the word 'hello' twenty times."}]
    with Engine(smollm2_path, n_ctx=512) as engine:
        plain = collect(engine.generate(prompt, GenerationParams(max_tokens=48, temperature=0, repeat_penalty=1.0)))
        penalised = collect(engine.generate(prompt, GenerationParams(max_tokens=48, temperature=0, repeat_penalty=1.8)))
        tokens = [engine.model.tokenize(c.answer, add_special=False) for c in (plain, penalised)]
    assert plain.answer != penalised.answer
    repeated = [1 - len(set(t)) / len(t) for t in tokens]
    assert repeated[1] < repeated[0], (plain.answer, penalised.answer)


@pytest.mark.slow
def test_top_k_1_is_greedy(smollm2_path):
    from edgeds.runtime import Engine

    prompt = [{"role": "user", "content": "Name a colour."}]
    with Engine(smollm2_path, n_ctx=512) as engine:
        answers = {collect(engine.generate(prompt, GenerationParams(max_tokens=12, temperature=1.5, top_k=1, seed=s))).answer
                   for s in range(3)}
        greedy = collect(engine.generate(prompt, GenerationParams(max_tokens=12, temperature=0))).answer
    assert answers == {greedy}


def test_batch_rows_and_serve_requests_take_the_sampling_fields():
    row = parse_row('{"id": 1, "prompt": "hi", "top_k": 20, "min_p": 0.1, "repeat_penalty": 1.2}', index=0, line=1,
                    defaults=GenerationParams(top_k=5))
    assert (row.error, row.params.top_k, row.params.min_p, row.params.repeat_penalty) == (None, 20, 0.1, 1.2)
    bad = parse_row('{"id": 2, "prompt": "hi", "repeat_penalty": 0.5}', index=1, line=2, defaults=GenerationParams())
    assert bad.error == "line 2: 'repeat_penalty' is out of range (must be between 1 and 2)"
    _, params, *_ = parse_request(b'{"messages": [{"role": "user", "content": "hi"}], "min_p": 0.2}',
                                    GenerationParams(top_k=40, min_p=0.05))
    assert (params.top_k, params.min_p) == (40, 0.2)  # the server's default, the request's own
    with pytest.raises(ApiError) as err:
        parse_request(b'{"messages": [{"role": "user", "content": "hi"}], "top_k": -1}')
    assert err.value.body["error"]["param"] == "top_k"
    with pytest.raises(RequestError, match="'min_p' is out of range"):
        sampling_params({"min_p": 1.5})


@pytest.mark.parametrize("command", ["run", "chat", "batch", "serve"])
def test_every_model_command_has_the_sampling_and_thread_options(command):
    from typer.main import get_command

    from edgeds.cli import app

    params = {name for p in get_command(app).commands[command].params for name in p.opts}
    assert {"--top-k", "--min-p", "--repeat-penalty", "--threads", "--no-think-prefix"} <= params


@pytest.mark.slow
def test_run_with_stdout_to_a_file_shows_progress_on_the_terminal(smollm2_path, tmp_path):
    """stdout to a file, stderr a terminal (a pty): a token count is drawn, then cleared."""
    answer = tmp_path / "answer.txt"
    master, slave = pty.openpty()
    with open(answer, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edgeds", "run", str(smollm2_path), "Say hello",
                                 "--max-tokens", "24", "--seed", "3", "--threads", "1"],
                                stdout=out, stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the pty
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=120) == 0, seen
    os.close(master)
    text = seen.decode(errors="replace")
    assert "edgeds: ~1 tokens, the answer goes to stdout" in text
    assert text.rstrip().endswith("\x1b[2K")  # the line is cleared at the end
    assert answer.read_text().strip() and "tokens" not in answer.read_text()
