"""`edgeds chat` argument handling (the app itself is tested with Pilot)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeds.cli import main


def test_missing_model_file_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["chat", str(tmp_path / "nope.gguf")])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("edgeds: error: ") and "nope.gguf" in err and err.count("\n") == 1


def test_bad_moe_offload_is_a_usage_error_before_loading(smollm2_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["chat", str(smollm2_path), "--moe-offload", "most"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--moe-offload 'most'" in err and err.count("\n") == 1


def test_cli_does_not_import_textual():
    code = "import sys, edgeds.cli; assert 'textual' not in sys.modules, 'textual imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)
