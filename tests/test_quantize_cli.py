"""Trap 4 of the first day, as a user met it on SmolLM2 (a Q4_1 file):
- `edgeds quantize --list` failed with "Missing argument 'src'";
- the help named `--allow-requantize`, which did not exist;
- `edgeds quantize smol.gguf out.gguf Q4_K_M` failed with "code 1", hiding llama.cpp's reason
  ("requantizing from type q4_1 is disabled"), while `--dry-run` planned the same job happily.
"""

from __future__ import annotations

import pytest

from tests.cli_helpers import cli

REASON = "requantizing from type q4_1 is disabled"


def test_list_needs_no_source(capsys):
    code, out, err = cli(["quantize", "--list"], capsys)
    assert code == 0, err
    assert "moe-q4" in out and "Q4_K_M" in out.splitlines()[-1]


def test_no_source_without_list_is_a_usage_error(capsys):
    code, _, err = cli(["quantize"], capsys)
    assert code == 2 and "usage: edgeds quantize IN.gguf OUT.gguf TYPE|RECIPE" in err


def test_the_option_the_help_names_exists(capsys):
    from typer.main import get_command

    from edgeds.cli import app

    code, out, _ = cli(["quantize", "--help"], capsys)
    assert code == 0 and "--allow-requantize" in out
    options = {o for p in get_command(app).commands["quantize"].params for o in p.opts}
    assert "--allow-requantize" in options


def test_requantizing_shows_llama_cpps_reason(smollm2_path, tmp_path, capsys):
    out_file = tmp_path / "out.gguf"
    code, _, err = cli(["quantize", smollm2_path, out_file, "Q4_K_M"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and REASON in lines[0] and "code 1" not in lines[0]
    assert "--allow-requantize quantizes it anyway" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_dry_run_reports_the_same_problem(smollm2_path, capsys):
    code, out, err = cli(["quantize", smollm2_path, "Q4_K_M", "--dry-run"], capsys)
    assert code == 1 and out == ""
    assert REASON in err and "--allow-requantize" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_allow_requantize_plans_and_writes_it(smollm2_path, tmp_path, capsys):
    from edgeds.catalog.gguf import read_gguf

    code, out, err = cli(["quantize", smollm2_path, "Q4_K_M", "--dry-run", "--allow-requantize"], capsys)
    assert code == 0, err
    assert "q4_1 -> q4_K" in out
    out_file = tmp_path / "out.gguf"
    code, out, err = cli(["quantize", smollm2_path, out_file, "Q4_K_M", "--allow-requantize"], capsys)
    assert code == 0, err
    assert out.strip() == str(out_file)
    assert "Q4_K" in read_gguf(out_file).quant_mix
