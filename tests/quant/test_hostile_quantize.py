"""Ctrl-C, SIGTERM and bad output paths for `edgeds quantize` and `edgeds convert --quant` (issue 16,
items 5 and 10).

The signals go to real subprocesses while llama.cpp's quantizer holds them: before, the Ctrl-C
landed in llama.cpp's log callback, ctypes discarded it ("Exception ignored ... KeyboardInterrupt")
and the run finished with rc 0; SIGTERM during convert left OUT.partial. The model is a numpy-built
Qwen2 of 60M parameters, which llama.cpp takes a few seconds to quantize on a small machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeds.catalog.gguf import read_gguf
from edgeds.cli import main
from tests.numpy_checkpoints import build_qwen2

BIG = dict(hidden=1024, ff=2816, layers=4, heads=8, kv_heads=2)


@pytest.fixture(scope="module")
def big_hf(tmp_path_factory) -> Path:
    return build_qwen2(tmp_path_factory.mktemp("big-hf"), **BIG)


@pytest.fixture(scope="module")
def big_f16(big_hf, tmp_path_factory) -> Path:
    from edgeds.convert import convert

    return convert(big_hf, tmp_path_factory.mktemp("big-f16") / "big-f16.gguf", "f16", progress=False)


def start(*args) -> subprocess.Popen:
    """`edgeds ARGS` with Ctrl-C handled as at a terminal (even in a job that ignores SIGINT)."""
    return subprocess.Popen([sys.executable, "-m", "edgeds", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def signal_when(path: Path, proc: subprocess.Popen, signum: int) -> tuple[int, str, float]:
    """Send `signum` as soon as `path` exists; returns (rc, stderr, seconds from signal to exit)."""
    deadline = time.monotonic() + 120
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"finished before {path.name} appeared: {proc.communicate()}"
    sent = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.monotonic() - sent


@pytest.mark.slow
def test_ctrl_c_while_llama_cpp_quantizes(big_f16, tmp_path):
    out = tmp_path / "q.gguf"
    rc, err, took = signal_when(tmp_path / "q.gguf.partial", start("quantize", big_f16, out, "Q4_K_M"),
                                signal.SIGINT)
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == "edgeds: quantize interrupted; unfinished files were removed"
    assert "Exception ignored" not in err and "Traceback" not in err
    assert took < 5 and list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_the_quantize_step_of_convert(big_hf, tmp_path, signum):
    out = tmp_path / "q.gguf"
    proc = start("convert", big_hf, "-o", out, "--quant", "Q4_K_M", "--no-progress")
    rc, err, took = signal_when(tmp_path / "q.gguf.partial", proc, signum)
    assert rc == 128 + signum, err
    assert err.strip().splitlines()[-1] == "edgeds: convert interrupted; unfinished files were removed"
    assert "Traceback" not in err and took < 5
    assert list(tmp_path.iterdir()) == []  # neither q.gguf.partial nor the staged q.gguf.f16.partial


@pytest.mark.slow
def test_sigterm_while_convert_writes(big_hf, tmp_path):
    out = tmp_path / "c.gguf"
    proc = start("convert", big_hf, "-o", out, "--outtype", "q8_0", "--no-progress")
    rc, err, _ = signal_when(tmp_path / "c.gguf.partial", proc, signal.SIGTERM)
    assert rc == 143, err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_quantize_onto_its_own_input_is_refused(smollm2_path, tmp_path, capsys):
    model = Path(shutil.copyfile(smollm2_path, tmp_path / "m.gguf"))
    before = model.stat().st_size
    for target in (model, tmp_path / "." / "m.gguf"):
        with pytest.raises(SystemExit) as exit_info:
            main(["quantize", str(model), str(target), "Q8_0"])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err == f"edgeds: error: {target}: is an input of this run ({model}); write the output somewhere else"
    assert model.stat().st_size == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(SystemExit):
        main(["quantize", str(model), str(folder), "Q8_0"])
    assert "is a folder" in capsys.readouterr().err and list(folder.iterdir()) == []


def tiny_moe(path: Path) -> Path:
    """A deepseek2-shaped GGUF header with routed-expert tensors (the layout rewrite reads no more)."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "deepseek2")
    writer.add_uint32("deepseek2.block_count", 2)
    writer.add_uint32("deepseek2.expert_count", 4)
    writer.add_uint32("deepseek2.expert_used_count", 2)
    writer.add_tensor("token_embd.weight", np.ones((8, 32), np.float32))
    for i in range(2):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(32, np.float32))
        for part in ("gate", "up", "down"):
            writer.add_tensor(f"blk.{i}.ffn_{part}_exps.weight", np.full((4, 32, 32), i, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_split_layout_temporary_files_are_never_named_like_finished_parts(tmp_path, monkeypatch):
    """They were NAME.partial-00001-of-00002.gguf, which a glob for split GGUFs takes for a model."""
    import edgeds.convert.layout as layout

    moved = []
    real_replace = os.replace

    def replace(src, dst):
        moved.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(layout.os, "replace", replace)
    written = layout.write_layout(tiny_moe(tmp_path / "src.gguf"), tmp_path / "moe.gguf", split=True)
    assert moved == [("moe-00001-of-00002.gguf.partial", "moe-00001-of-00002.gguf"),
                     ("moe-00002-of-00002.gguf.partial", "moe-00002-of-00002.gguf")]
    assert not any(re.search(r"-\d{5}-of-\d{5}\.gguf$", temp) for temp, _ in moved)
    info = read_gguf(written[0])
    assert len(info.parts) == 2 and info.layout.expert_bytes[1] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moe-00001-of-00002.gguf", "moe-00002-of-00002.gguf",
                                                          "src.gguf"]
