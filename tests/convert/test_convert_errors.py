"""Bad input to `edgeds convert` gives one line naming the problem, a non-zero exit, and no output.

Each case damages a copy of the tiny Qwen2 checkpoint the way real downloads go wrong and runs the
CLI through `edgeds.cli.main`; neither OUT nor OUT.partial may exist afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from edgeds.cli import main


def _copy(source: Path, target: Path) -> Path:
    """A copy whose big files are hard links: damage a file by replacing it, never in place."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _run(src: Path | str, out: Path, capsys, *extra: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(src), "-o", str(out), "--no-progress", *extra])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeds: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    return err


@pytest.fixture
def checkpoint(tmp_path, dense_hf):
    return _copy(dense_hf("qwen2"), tmp_path / "ckpt")


@pytest.fixture
def sharded(tmp_path, dense_hf):
    from tests.tiny_checkpoints import reshard

    return reshard(dense_hf("qwen2"), tmp_path / "sharded", shards=2)


@pytest.mark.slow
def test_missing_shard(sharded, tmp_path, capsys):
    (sharded / "model-00002-of-00002.safetensors").unlink()
    err = _run(sharded, tmp_path / "out.gguf", capsys)
    assert "model-00002-of-00002.safetensors: missing shard (listed in model.safetensors.index.json)" in err


@pytest.mark.slow
def test_index_and_shards_disagree(sharded, tmp_path, capsys):
    index_path = sharded / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = next(n for n, f in index["weight_map"].items() if f.startswith("model-00001"))
    index["weight_map"][name] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    err = _run(sharded, tmp_path / "out.gguf", capsys)
    assert f"holds '{name}', which model.safetensors.index.json puts in model-00002-of-00002.safetensors" in err


@pytest.mark.slow
def test_truncated_safetensors(checkpoint, tmp_path, capsys):
    weights = checkpoint / "model.safetensors"
    _replace(weights, weights.read_bytes()[:-1000])
    err = _run(checkpoint, tmp_path / "out.gguf", capsys)
    assert f"{weights}: truncated safetensors file" in err


@pytest.mark.slow
def test_corrupt_safetensors_header(checkpoint, tmp_path, capsys):
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\x00garbage, not the JSON header.."
    _replace(weights, bytes(data))
    err = _run(checkpoint, tmp_path / "out.gguf", capsys)
    assert f"{weights}: corrupt safetensors header" in err


@pytest.mark.slow
def test_unsupported_architecture(checkpoint, tmp_path, capsys):
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    _replace(config_path, json.dumps(config).encode())
    err = _run(checkpoint, tmp_path / "out.gguf", capsys)
    assert "architecture 'GPT2LMHeadModel' is not supported; supported: Qwen2ForCausalLM, LlamaForCausalLM, " \
           "Qwen3ForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM" in err


@pytest.mark.slow
def test_missing_tokenizer(checkpoint, tmp_path, capsys):
    (checkpoint / "tokenizer.json").unlink()
    err = _run(checkpoint, tmp_path / "out.gguf", capsys)
    assert f"{checkpoint / 'tokenizer.json'}: missing" in err


@pytest.mark.slow
def test_tensor_that_maps_to_no_gguf_name(checkpoint, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    weights = checkpoint / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["model.layers.0.mlp.extra_proj.weight"] = tensors["model.norm.weight"].copy()
    weights.unlink()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    err = _run(checkpoint, tmp_path / "out.gguf", capsys)
    assert "tensor 'model.layers.0.mlp.extra_proj.weight' maps to no GGUF tensor" in err


@pytest.mark.slow
def test_not_enough_disk_space(checkpoint, tmp_path, capsys, monkeypatch):
    """The check runs before anything is written, from the planned size (the disk here is not full)."""
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")

    def tight(path):
        total, used, _ = real(path)
        return usage(total, used, 5 << 20)

    monkeypatch.setattr(shutil, "disk_usage", tight)
    err = _run(checkpoint, tmp_path / "out.gguf", capsys)
    assert "not enough disk space: the GGUF needs" in err and "5.0 MiB free" in err


@pytest.mark.slow
def test_disk_filling_up_while_writing_leaves_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    from edgeds.convert import gguf_writer

    real_write = gguf_writer.GGUFWriter.write
    calls = []

    def write(self, name, pieces):
        calls.append(name)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, name, pieces)

    monkeypatch.setattr(gguf_writer.GGUFWriter, "write", write)
    err = _run(checkpoint, tmp_path / "out.gguf", capsys)
    assert "out.gguf.partial: the disk is full" in err


def test_missing_source_folder(tmp_path, capsys):
    err = _run(tmp_path / "nowhere" / "model", tmp_path / "out.gguf", capsys)
    assert "not a checkpoint folder" in err


def test_bad_outtype(tmp_path, capsys):
    err = _run(tmp_path / "model", tmp_path / "out.gguf", capsys, "--outtype", "q4_k")
    assert "--outtype 'q4_k': choose one of f32, f16, bf16, q8_0" in err


@pytest.mark.slow
def test_an_earlier_good_file_survives_a_failed_conversion(checkpoint, tmp_path, capsys):
    out = tmp_path / "out.gguf"
    (checkpoint / "tokenizer.json").unlink()
    with pytest.raises(SystemExit):
        out.write_bytes(b"an earlier conversion")
        main(["convert", str(checkpoint), "-o", str(out), "--no-progress"])
    assert out.read_bytes() == b"an earlier conversion"
    assert not out.with_name("out.gguf.partial").exists()


def test_repo_id_without_hub_access(tmp_path, capsys):
    """Tests run with HF_HUB_OFFLINE=1 and an empty cache: the repo cannot be fetched."""
    err = _run("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", tmp_path / "out.gguf", capsys)
    assert "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B: cannot download from the Hugging Face hub" in err
    assert err.endswith("pass a local folder instead")
