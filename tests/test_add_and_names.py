"""Trap 7 of the first day: no way around the hub.
- A GGUF downloaded by hand could not be registered under its registry name or a name of one's
  own (Ollama's `ollama create`): now `edgeds add FILE.gguf --as ID[:QUANT]`.
- `deepseek-r1:7b`-style names got no suggestion: now Ollama's names resolve, or say what to type.
- `chat`'s hub error told the user to use `edgeds run`: now it says `edgeds add`.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from edgeds.catalog.resolve import canonical
from edgeds.cli import main
from edgeds.errors import ModelNotFound
from edgeds.loader import open_engine
from tests.cli_helpers import cli
from tests.test_downloads import at_terminal, machine  # noqa: F401 - `machine` is a fixture


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    """Each test adds models to an edgeds home of its own."""
    monkeypatch.setenv("EDGEDS_HOME", str(tmp_path / "edgeds-home"))


@pytest.fixture
def my_gguf(smollm2_path, tmp_path):
    """A GGUF the user downloaded by hand (a copy, so that the test may delete it)."""
    path = tmp_path / "downloads" / "smol.gguf"
    path.parent.mkdir()
    shutil.copyfile(smollm2_path, path)
    return path


def test_add_a_file_under_a_name_of_ones_own(my_gguf, capsys):
    code, out, err = cli(["add", my_gguf, "--as", "my-smol"], capsys)
    assert code == 0, err
    assert out.startswith("added my-smol:default (not a registry model: no registry defaults): 1 file(s) by hard link")
    assert os.stat(my_gguf).st_nlink == 2  # no copy: the same file twice
    code, out, _ = cli(["list", "--local"], capsys)
    assert code == 0 and any(line.split()[:1] == ["my-smol:default"] and " added " in line for line in out.splitlines())
    code, out, _ = cli(["fit", "my-smol", "--ram", "4", "--vram", "0"], capsys)
    assert code == 0 and "fits: cpu" in out
    my_gguf.unlink()  # the hard link keeps the model when the download is cleaned up
    code, out, _ = cli(["show", "my-smol"], capsys)
    assert code == 0 and "architecture    llama" in out
    code, _, err = cli(["add", my_gguf.with_name("other.gguf"), "--as", "my-smol"], capsys)
    assert code == 1 and "no such file" in err
    code, out, _ = cli(["rm", "my-smol"], capsys)
    assert code == 0 and out.startswith("removed my-smol:default")
    code, _, err = cli(["show", "my-smol"], capsys)
    assert code == 1 and "not a file and not a registry model" in err


@pytest.mark.slow
def test_run_and_batch_take_an_added_name(my_gguf, tmp_path, capsys):
    assert cli(["add", my_gguf, "--as", "my-smol:Q4_1"], capsys)[0] == 0
    code, out, err = cli(["run", "my-smol", "Say hi", "--max-tokens", 4, "--json"], capsys)
    assert code == 0, err
    assert '"type": "done"' in out.splitlines()[-1]
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"id": 1, "prompt": "Say hi", "max_tokens": 4}\n')
    code, _, err = cli(["batch", rows, "-o", tmp_path / "out.jsonl", "-m", "my-smol:q4_1", "--parallel", 1], capsys)
    assert code == 0 and '"error": null' in (tmp_path / "out.jsonl").read_text(), err


def test_add_under_a_registry_name_gets_the_registry_defaults(my_gguf, capsys):
    code, out, err = cli(["add", my_gguf, "--as", "r1-distill-qwen-1.5b:Q8_0"], capsys)
    assert code == 0, err
    assert "(registry model DeepSeek-R1-Distill-Qwen-1.5B)" in out
    code, out, _ = cli(["add", my_gguf, "--as", "r1-distill-qwen-1.5b:q8_0"], capsys)
    assert code == 1  # the name is taken
    code, out, _ = cli(["show", "deepseek-r1:1.5b-q8_0"], capsys)  # Ollama's name for it
    assert code == 0 and "registry        r1-distill-qwen-1.5b:Q8_0" in out
    code, out, _ = cli(["pull", "r1-distill-qwen-1.5b:Q8_0"], capsys)
    assert code == 0 and "nothing to download" in out
    with open_engine("r1-distill-qwen-1.5b:Q8_0", n_ctx=512) as engine:
        assert engine.defaults.max_tokens == 32768 and engine.think_prefix  # the registry's R1 defaults


@pytest.mark.parametrize("bad", ["My Model", "x:bad quant"])
def test_add_refuses_bad_names(smollm2_path, bad, capsys):
    code, _, err = cli(["add", smollm2_path, "--as", bad], capsys)
    assert code == 2 and "--as" in err


def test_add_refuses_what_is_not_a_gguf(tmp_path, capsys):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    code, _, err = cli(["add", text, "--as", "notes"], capsys)
    assert code == 1 and err.startswith(f"edgeds: error: {text}")


# Ollama's names (ollama.com/library) → what edgeds resolves them to.
OLLAMA = [
    ("deepseek-r1:1.5b", "r1-distill-qwen-1.5b"),
    ("deepseek-r1:7b", "r1-distill-qwen-7b"),
    ("deepseek-r1:14b", "r1-distill-qwen-14b"),
    ("deepseek-r1:32b", "r1-distill-qwen-32b"),
    ("deepseek-r1:70b", "r1-distill-llama-70b"),
    ("deepseek-r1:7b-qwen-distill-q4_K_M", "r1-distill-qwen-7b:Q4_K_M"),  # a tag with its quant
    ("deepseek-r1:8b-llama-distill-q8_0", "r1-distill-llama-8b:Q8_0"),
    ("deepseek-r1:8b-0528-qwen3-q4_K_M", "r1-0528-qwen3-8b:Q4_K_M"),
    ("DeepSeek-R1:14B", "r1-distill-qwen-14b"),  # as typed
    ("deepseek-v2:16b", "v2-lite-chat"),
    ("deepseek-coder-v2", "coder-v2-lite-instruct"),
    ("r1-distill-qwen-7b:Q8_0", "r1-distill-qwen-7b:Q8_0"),  # edgeds' own names pass through
]


@pytest.mark.parametrize("name, expected", OLLAMA)
def test_ollama_names(name, expected):
    assert canonical(name) == expected


@pytest.mark.parametrize("name, says", [
    ("deepseek-r1:8b", "use r1-0528-qwen3-8b or r1-distill-llama-8b"),  # changed model in May 2025
    ("deepseek-r1:8b-q4_K_M", "use r1-0528-qwen3-8b or r1-distill-llama-8b"),
    ("deepseek-r1", "use r1-0528-qwen3-8b"),
    ("deepseek-r1:671b", "use r1 (DeepSeek-R1)"),
])
def test_ambiguous_ollama_names_say_what_to_type(name, says):
    with pytest.raises(ModelNotFound, match=f"^{re.escape(name)}: .*{re.escape(says)}"):
        canonical(name)


def test_ollama_names_work_in_every_command(capsys):
    code, _, err = cli(["show", "deepseek-r1:7b"], capsys)
    assert code == 1 and "run `edgeds pull r1-distill-qwen-7b:Q4_K_M`" in err
    code, out, _ = cli(["fit", "deepseek-r1:14b", "--ram", "32", "--vram", "0"], capsys)
    assert code == 0 and out.startswith("r1-distill-qwen-14b:Q4_K_M at context")
    code, _, err = cli(["run", "deepseek-r1:3b", "hi"], capsys)
    assert code == 1 and "did you mean deepseek-r1:" in err


def test_chats_hub_error_points_at_edgeds_add_not_run(machine, monkeypatch):  # noqa: F811
    """Offline, on a terminal, the user says yes to the download: the hub error names a way
    that works for chat."""
    monkeypatch.setattr("edgeds.cli.chat.on_terminal", lambda: True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # whatever the import saw
    machine(ram_gib=32, disk_gb=500)
    stderr = at_terminal(monkeypatch, "y")
    with pytest.raises(SystemExit) as info:
        main(["chat", "r1-distill-qwen-7b"])
    assert info.value.code == 1
    error = stderr.getvalue().strip().splitlines()[-1]
    assert "HF_HUB_OFFLINE" in error and "edgeds run" not in error
    assert "`edgeds add /path/to/DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf --as r1-distill-qwen-7b:Q4_K_M`" in error


def test_a_path_is_never_an_added_model(smollm2_path, tmp_path, capsys):
    """`edgeds rm ../../precious` must not reach a folder outside the added models: rm deletes
    the folder of what it finds."""
    assert cli(["add", smollm2_path, "--as", "safe"], capsys)[0] == 0  # the models folder exists
    precious = tmp_path / "precious" / "keep" / "weights.gguf"  # laid out like an added model
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"GGUF")
    for name in ("../../precious", "../../precious:keep", "..", "a/b"):
        code, _, err = cli(["rm", name], capsys)
        assert code != 0, name
    assert precious.is_file() and cli(["show", "safe"], capsys)[0] == 0


def test_add_from_another_filesystem_links_symbolically(my_gguf, monkeypatch, capsys):
    import errno

    def no_hard_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr("edgeds.catalog.local.os.link", no_hard_link)
    code, out, _ = cli(["add", my_gguf, "--as", "far-away"], capsys)
    assert code == 0 and "by symlink" in out
    code, out, _ = cli(["show", "far-away"], capsys)
    assert code == 0 and "architecture    llama" in out
    assert cli(["rm", "far-away"], capsys)[0] == 0 and my_gguf.is_file()  # the original stays
