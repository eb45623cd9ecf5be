"""`edgeds chat` argument handling (the app itself is tested with Pilot)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeds.cli import main
from tests.conftest import REPO


@pytest.fixture
def terminal(monkeypatch):
    """As if run in a terminal (pytest's stdin and stdout are not one)."""
    monkeypatch.setattr("edgeds.cli.chat.on_terminal", lambda: True)


def test_piped_chat_refuses_and_points_at_run(smollm2_path):
    """Found as: `echo hi | edgeds chat model.gguf` started the full-screen app and wrote
    escape codes into the pipe."""
    done = subprocess.run([sys.executable, "-m", "edgeds", "chat", str(smollm2_path)], input=b"hi\n",
                          capture_output=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert done.stdout == b""  # no escape codes
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "needs a terminal" in err and "edgeds run" in err


def test_missing_model_file_is_one_line_error(tmp_path, capsys, terminal):
    with pytest.raises(SystemExit) as exc:
        main(["chat", str(tmp_path / "nope.gguf")])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("edgeds: error: ") and "nope.gguf" in err and err.count("\n") == 1


def test_bad_moe_offload_is_a_usage_error_before_loading(smollm2_path, capsys, terminal):
    with pytest.raises(SystemExit) as exc:
        main(["chat", str(smollm2_path), "--moe-offload", "most"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--moe-offload 'most'" in err and err.count("\n") == 1


def test_cli_does_not_import_textual():
    code = "import sys, edgeds.cli; assert 'textual' not in sys.modules, 'textual imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)
