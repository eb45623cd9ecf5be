"""`edgeds run` end to end, as a user runs it: a subprocess on real model files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.conftest import THINK_GRAMMAR


def edgeds(*args, stdin=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "edgeds", *map(str, args)],
        input=stdin, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def grammar_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("grammar") / "think.gbnf"
    path.write_text(THINK_GRAMMAR)
    return path


def test_json_events_from_smollm2(smollm2_path):
    result = edgeds("run", smollm2_path, "Say hello", "--json", "--max-tokens", 24, "--seed", 1)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["type"] == "done"
    assert {e["type"] for e in events[:-1]} == {"answer"}
    assert all(isinstance(e["text"], str) for e in events[:-1])
    stats = events[-1]["stats"]
    assert set(stats) == {
        "prompt_tokens", "reasoning_tokens", "answer_tokens", "ttft_s", "prompt_tok_s", "decode_tok_s", "finish_reason",
        "stopped_thinking", "draft_tokens", "accepted_tokens", "cached_tokens",
    }
    assert stats["stopped_thinking"] is False
    assert stats["decode_tok_s"] > 0
    assert stats["answer_tokens"] >= len(events) - 1  # a piece is at least one token


@pytest.mark.slow
def test_piped_stdout_carries_only_the_answer(tiny_r1_gguf, grammar_file):
    result = edgeds("run", tiny_r1_gguf, "Hi", "--grammar", grammar_file, "--seed", 4)
    assert result.returncode == 0, result.stderr
    answer = result.stdout.strip()
    assert answer and set(answer) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ")
    reasoning = result.stderr.strip()
    assert reasoning and "\x1b[" not in reasoning  # not a terminal: no colour codes
    assert "think>" not in result.stdout + result.stderr


@pytest.mark.slow
def test_json_shows_reasoning_events_and_hide_reasoning_drops_them(tiny_r1_gguf, grammar_file):
    shown = edgeds("run", tiny_r1_gguf, "Hi", "--grammar", grammar_file, "--seed", 4, "--json")
    types = [json.loads(line)["type"] for line in shown.stdout.splitlines()]
    assert types[0] == "reasoning" and "answer" in types and types[-1] == "done"
    assert types.index("answer") > max(i for i, t in enumerate(types) if t == "reasoning")
    hidden = edgeds("run", tiny_r1_gguf, "Hi", "--grammar", grammar_file, "--seed", 4, "--json", "--hide-reasoning")
    hidden_types = [json.loads(line)["type"] for line in hidden.stdout.splitlines()]
    assert "reasoning" not in hidden_types and "answer" in hidden_types
    plain = edgeds("run", tiny_r1_gguf, "Hi", "--grammar", grammar_file, "--seed", 4, "--hide-reasoning")
    assert plain.stderr.strip() == "" and plain.stdout.strip()


def test_prompt_from_stdin_and_verbose_stats(smollm2_path):
    result = edgeds("run", smollm2_path, "--max-tokens", 8, "--verbose", stdin="What is 2+2?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "tok/s" in result.stderr and "finish" in result.stderr


def test_missing_model_is_one_line_error():
    result = edgeds("run", "no-such-model.gguf", "hi")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["edgeds: error: no-such-model.gguf: no such file"]


def test_truncated_gguf_is_one_line_error(smollm2_path, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(smollm2_path.read_bytes()[: 1 << 20])
    result = edgeds("run", broken, "hi")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgeds: error: {broken}")
    assert "Traceback" not in result.stderr


def test_missing_grammar_file(smollm2_path, tmp_path):
    result = edgeds("run", smollm2_path, "hi", "--grammar", tmp_path / "nope.gbnf")
    assert result.returncode == 2
    assert "nope.gbnf" in result.stderr and "Traceback" not in result.stderr


def test_bad_grammar(smollm2_path, tmp_path):
    bad = tmp_path / "bad.gbnf"
    bad.write_text("root ::= (unclosed")
    result = edgeds("run", smollm2_path, "hi", "--grammar", bad)
    assert result.returncode == 2
    assert "grammar" in result.stderr.splitlines()[-1] and "Traceback" not in result.stderr


def test_ctrl_c_ends_cleanly_as_cancelled(smollm2_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeds", "run", str(smollm2_path), "Tell a very long story.", "--json",
         "--max-tokens", "4000", "--temperature", "1.0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    first = proc.stdout.readline()
    assert json.loads(first)["type"] == "answer"
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    done = json.loads(rest.splitlines()[-1])
    assert done["type"] == "done" and done["stats"]["finish_reason"] == "cancelled"
    assert done["stats"]["answer_tokens"] < 4000
    assert proc.returncode == 130
    assert "Traceback" not in err


def test_ctrl_c_while_loading_is_one_line_and_exit_130(smollm2_path, monkeypatch, capsys):
    """A Ctrl-C no command turned into its own ending (here: while the model loads) ends with exit
    code 130 and no traceback."""
    import edgeds.loader
    from edgeds.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgeds.loader, "open_engine", interrupted)
    with pytest.raises(SystemExit) as done:
        main(["run", str(smollm2_path), "Hi"])
    assert done.value.code == 130
    assert "Traceback" not in capsys.readouterr().err
