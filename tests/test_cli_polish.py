"""Trap 8 of the first day, CLI polish: no `--version` and no examples in any `--help`; `fit --ctx`
against `--n-ctx` everywhere else; `serve [MODEL]` shown as optional although required; `--n-ctx`
beyond the trained length accepted without a word. (--threads, --top-k, --min-p and
--repeat-penalty: tests/test_defaults.py.)
"""

from __future__ import annotations

import importlib.metadata

import pytest
from typer.main import get_command

from edgeds.cli import app
from edgeds.loader import context_warning
from tests.cli_helpers import cli

COMMANDS = sorted(get_command(app).commands)


def test_version(capsys):
    code, out, _ = cli(["--version"], capsys)
    assert code == 0 and out == f"edgeds {importlib.metadata.version('edgeds')}\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_examples_of_that_command(command, capsys):
    code, out, _ = cli([command, "--help"], capsys)
    assert code == 0
    examples = out.split("Examples:", 1)[1].strip().splitlines()
    assert examples and all(f"edgeds {command}" in line for line in examples), examples


def test_fit_takes_n_ctx_like_every_other_command_and_ctx_still_works(capsys):
    args = ["fit", "r1-distill-qwen-7b", "--ram", "16", "--vram", "0"]
    code, with_n_ctx, _ = cli(args + ["--n-ctx", "8192"], capsys)
    assert code == 0 and with_n_ctx.startswith("r1-distill-qwen-7b:Q4_K_M at context 8192:")
    assert cli(args + ["--ctx", "8192"], capsys)[1] == with_n_ctx


def test_serve_shows_model_as_required(capsys):
    code, out, _ = cli(["serve", "--help"], capsys)
    usage = out.splitlines()[0]
    assert code == 0 and usage == "Usage: edgeds serve [OPTIONS] {model}" and "[model]" not in usage
    code, _, err = cli(["serve"], capsys)
    assert code == 2 and "Missing argument 'model'" in err


def test_n_ctx_beyond_the_trained_length_warns(smollm2_path):
    assert context_warning(smollm2_path, 8192) is None  # SmolLM2 was trained on 8192
    assert context_warning(smollm2_path, None) is None
    assert context_warning(smollm2_path, 16384) == (
        f"edgeds: warning: --n-ctx 16384 is beyond the 8192 tokens {smollm2_path.name} was trained on; "
        "llama.cpp stretches its position encoding past that and quality drops")


@pytest.mark.slow
def test_run_with_n_ctx_beyond_the_trained_length_says_so(smollm2_path, capsys):
    code, out, err = cli(["run", smollm2_path, "hi", "--n-ctx", 16384, "--max-tokens", 1, "--json"], capsys)
    assert code == 0, err
    assert err.splitlines()[0].startswith("edgeds: warning: --n-ctx 16384 is beyond the 8192 tokens")
