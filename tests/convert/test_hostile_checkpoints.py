"""Hostile checkpoints and output paths for `edgeds convert` (issue 16, items 8 and 10).

Every case runs the CLI in this process on a numpy-built Qwen2 checkpoint (no torch) and must end
with one line naming the file and the problem, a non-zero exit, and no OUT or OUT.partial: a
config that disagrees with its tensors, safetensors headers and indexes with fields of the wrong
JSON type or shards outside the folder, malformed config.json and tokenizer.json structures, and
outputs that are a folder, too long a name, or one of the inputs.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest

from edgeds.cli import main
from tests.numpy_checkpoints import build_qwen2


def convert_fails(src: Path, out: Path, capsys, *extra: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(src), "-o", str(out), "--no-progress", *extra])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeds: error: ") and "\n" not in err, err
    assert not out.exists() or out.is_dir()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(out.name + ".")], list(out.parent.iterdir())
    return err


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return build_qwen2(tmp_path / "ckpt")


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    replaced = change(data)  # a list replaces the document; anything else is an edit's return value
    data = replaced if isinstance(replaced, list) else data
    path.write_text(json.dumps(data), encoding="utf-8")


def header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def write_safetensors(path: Path, header: dict | bytes, data: bytes) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.unlink()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_the_numpy_checkpoint_converts(ckpt, tmp_path):
    """The baseline every case below damages."""
    from edgeds.catalog.gguf import read_gguf
    from edgeds.convert import convert

    info = read_gguf(convert(ckpt, tmp_path / "ok.gguf", "f16", progress=False))
    assert info.arch == "qwen2" and info.metadata["qwen2.block_count"] == 2
    assert info.metadata["tokenizer.ggml.pre"] == "deepseek-r1-qwen"


# ---------------------------------------------------------------------------------------------
# 8. The config against the tensors


@pytest.mark.parametrize("key, value, message", [
    ("hidden_size", 128, "tensor token_embd.weight (from model.embed_tokens.weight) has shape [264, 64], "
                         "but the config implies [264, 128] (vocab_size x hidden_size)"),
    ("vocab_size", 300, "tensor token_embd.weight (from model.embed_tokens.weight) has shape [264, 64], "
                        "but the config implies [300, 64] (vocab_size x hidden_size)"),
    ("intermediate_size", 96, "tensor blk.0.ffn_gate.weight (from model.layers.0.mlp.gate_proj.weight) has shape "
                              "[128, 64], but the config implies [96, 64]"),
    ("num_key_value_heads", 4, "tensor blk.0.attn_k.weight (from model.layers.0.self_attn.k_proj.weight) has "
                               "shape [32, 64], but the config implies [64, 64] (kv_size x hidden_size)"),
])
def test_config_that_disagrees_with_the_tensors(ckpt, tmp_path, capsys, key, value, message):
    edit_json(ckpt / "config.json", lambda c: c.update({key: value}))
    err = convert_fails(ckpt, tmp_path / "out.gguf", capsys)
    assert f"{ckpt / 'config.json'}: {message}" in err


def test_a_huge_vocab_size_fails_before_any_padding(ckpt, tmp_path, capsys):
    edit_json(ckpt / "config.json", lambda c: c.update(vocab_size=2_000_000_000))
    start = time.monotonic()
    err = convert_fails(ckpt, tmp_path / "out.gguf", capsys)
    assert "the config implies [2000000000, 64]" in err
    assert time.monotonic() - start < 5


# ---------------------------------------------------------------------------------------------
# 8. Safetensors headers and indexes


def _entry(header: dict) -> dict:
    return header["model.norm.weight"]


@pytest.mark.parametrize("damage, message", [
    (lambda h: _entry(h).update(dtype=["F32"]), "dtype ['F32'] is not a string"),
    (lambda h: _entry(h).update(data_offsets=[str(o) for o in _entry(h)["data_offsets"]]), "data_offsets ['"),
    (lambda h: _entry(h).update(data_offsets=[float(o) for o in _entry(h)["data_offsets"]]), ".0] is not [begin, end]"),
    (lambda h: _entry(h).update(shape=[-1, -64]), "shape [-1, -64] is not a list of non-negative integers"),
    (lambda h: _entry(h).update(shape="64"), "shape '64' is not a list"),
    (lambda h: h.update({"model.norm.weight": 5}), "entry for 'model.norm.weight' (not an object)"),
    (lambda h: _entry(h).update(data_offsets=[0]), "is not [begin, end]"),
    # 2**32 x 2**32 F32 elements: an int64 product wraps to 0, which "fits" offsets [0, 0]
    (lambda h: h.update({"x.weight": {"dtype": "F32", "shape": [1 << 32, 1 << 32], "data_offsets": [0, 0]}}),
     "'x.weight' spans 0 bytes, F32[4294967296, 4294967296] needs 73786976294838206464"),
])
def test_header_fields_of_the_wrong_json_type(ckpt, tmp_path, capsys, damage, message):
    weights = ckpt / "model.safetensors"
    header, data = header_of(weights)
    damage(header)
    write_safetensors(weights, header, data)
    assert message in convert_fails(ckpt, tmp_path / "out.gguf", capsys)


@pytest.mark.parametrize("length", [0xFFFFFFFFFFFFFFFF, 1 << 63, (1 << 63) + 5])
def test_header_size_past_int64(ckpt, tmp_path, capsys, length):
    weights = ckpt / "model.safetensors"
    raw = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(struct.pack("<Q", length) + raw[8:])
    assert f"corrupt or truncated safetensors header (claims {length} bytes)" in \
        convert_fails(ckpt, tmp_path / "out.gguf", capsys)


def _index(ckpt: Path, shard_of) -> Path:
    header, _ = header_of(ckpt / "model.safetensors")
    names = [n for n in header if n != "__metadata__"]
    path = ckpt / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": {n: shard_of(n) for n in names}}))
    return path


@pytest.mark.parametrize("shard", [5, None, ["model.safetensors"], "../ckpt/model.safetensors", "/etc/passwd",
                                   "sub/../model.safetensors", ""])
def test_index_naming_a_shard_that_is_no_file_inside_the_folder(ckpt, tmp_path, capsys, shard):
    index = _index(ckpt, lambda n: shard if n == "model.norm.weight" else "model.safetensors")
    err = convert_fails(ckpt, tmp_path / "out.gguf", capsys)
    assert f"{index}: weight_map puts 'model.norm.weight' in {shard!r}, which is not a file name inside" in err


def test_shard_links_out_of_the_folder_are_refused(ckpt, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (ckpt / "model.safetensors").rename(elsewhere / "model.safetensors")
    (ckpt / "model.safetensors").symlink_to(elsewhere / "model.safetensors")
    assert "model.safetensors: a link out of the checkpoint folder" in convert_fails(ckpt, tmp_path / "o.gguf", capsys)
    _index(ckpt, lambda n: "model.safetensors")
    assert "which is not a file name inside the checkpoint folder" in convert_fails(ckpt, tmp_path / "o.gguf", capsys)


def test_hub_snapshot_links_into_its_blobs_are_followed(tmp_path):
    """The hub cache's own layout: snapshots/REV/FILE → ../../blobs/ETAG."""
    from edgeds.convert import convert

    repo = tmp_path / "models--acme--tiny"
    snapshot = build_qwen2(repo / "snapshots" / "abc123")
    (repo / "blobs").mkdir()
    for name in ("model.safetensors", "config.json"):
        (snapshot / name).rename(repo / "blobs" / name)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", name))
    _index(snapshot, lambda n: "model.safetensors")
    assert convert(snapshot, tmp_path / "ok.gguf", "f16", progress=False).is_file()


# ---------------------------------------------------------------------------------------------
# 8. Malformed config.json and tokenizer.json structures


@pytest.mark.parametrize("file, change, message", [
    ("config.json", lambda c: [c], "config.json: the config must be a JSON object, not list"),
    ("config.json", lambda c: c.update(hidden_size="64"), "config.json: hidden_size is '64'; it must be an integer"),
    ("config.json", lambda c: c.update(hidden_size=[64]), "hidden_size is [64]; it must be an integer"),
    ("config.json", lambda c: c.update(hidden_size=64.5), "hidden_size is 64.5; it must be an integer"),
    ("config.json", lambda c: c.update(num_hidden_layers=600), "num_hidden_layers is 600; it must be an integer "
                                                               "from 1 to 512"),
    ("config.json", lambda c: c.update(num_attention_heads=0), "num_attention_heads is 0"),
    ("config.json", lambda c: c.update(rope_scaling=[1]), "rope_scaling is [1]; it must be an object"),
    ("config.json", lambda c: c.update(rope_scaling={"rope_type": "linear", "factor": "2"}),
     "rope_scaling.factor is '2'; it must be a number"),
    ("config.json", lambda c: c.update(quantization_config="fp8"), "quantization_config is 'fp8'"),
    ("config.json", lambda c: c.update(tie_word_embeddings="no"), "tie_word_embeddings is 'no'; it must be true or false"),
    ("config.json", lambda c: c.update(architectures="Qwen2ForCausalLM"), "architectures is 'Qwen2ForCausalLM'"),
    ("config.json", lambda c: c.update(num_key_value_heads=3), "llama.cpp needs whole groups of heads"),
    ("config.json", lambda c: c.update(rms_norm_eps=float("nan")), "rms_norm_eps is nan"),
    ("tokenizer.json", lambda t: [t], "tokenizer.json: a tokenizer file must be a JSON object, not list"),
    ("tokenizer.json", lambda t: t.update(model=[1]), "not a BPE tokenizer"),
    ("tokenizer.json", lambda t: t.update(added_tokens={"a": 1}), "added_tokens must be a list"),
    ("tokenizer.json", lambda t: t["added_tokens"][0].pop("id"), "added_tokens[0] needs a string 'content' and an 'id'"),
    ("tokenizer.json", lambda t: t["added_tokens"][1].update(id=-4), "added_tokens[1] needs"),
    ("tokenizer.json", lambda t: t["model"]["vocab"].update(a="7"), "model.vocab gives 'a' the id '7'"),
    ("tokenizer.json", lambda t: t["model"].update(merges=[1, 2]), "model.merges must list"),
    ("tokenizer.json", lambda t: t["pre_tokenizer"].update(pretokenizers={"type": "Split"}),
     "unrecognised pre-tokenizer definition"),
    ("tokenizer.json", lambda t: t["pre_tokenizer"]["pretokenizers"].append("ByteLevel"),
     "unrecognised pre-tokenizer definition"),
    ("tokenizer.json", lambda t: t["pre_tokenizer"]["pretokenizers"][0].update(pattern="Regex"),
     "unrecognised pre-tokenizer definition"),
    ("tokenizer.json", lambda t: t.update(normalizer="NFC"), "a text normalizer is not supported"),
    ("tokenizer.json", lambda t: t.update(post_processor={"type": "Sequence", "processors": ["x", 3]}), None),
    ("tokenizer_config.json", lambda t: t.update(bos_token=["<s>"], tokenizer_class=None), None),
    ("config.json", lambda c: c.update(bos_token_id=5000), "config.json: bos_token_id 5000 is not a token id"),
])
def test_malformed_json_structures(ckpt, tmp_path, capsys, file, change, message):
    if file == "config.json" and message and "bos_token_id" in message:
        edit_json(ckpt / "tokenizer_config.json", lambda t: t.pop("bos_token"))
    edit_json(ckpt / file, change)
    out = tmp_path / "out.gguf"
    if message is None:  # shapes that mean "not set": the conversion goes through
        from edgeds.convert import convert

        assert convert(ckpt, out, "f16", progress=False).is_file()
        return
    assert message in convert_fails(ckpt, out, capsys)


@pytest.mark.parametrize("file", ["config.json", "tokenizer.json", "model.safetensors.index.json"])
def test_json_nested_past_the_recursion_limit(ckpt, tmp_path, capsys, file):
    (ckpt / file).write_text("[" * 100_000)
    err = convert_fails(ckpt, tmp_path / "out.gguf", capsys)
    assert f"{ckpt / file}:" in err and "nested too deeply" in err


# ---------------------------------------------------------------------------------------------
# 10. Output paths


def test_output_that_is_an_existing_folder(ckpt, tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    err = convert_fails(ckpt, folder, capsys)
    assert err == f"edgeds: error: {folder}: is a folder; give the path of the file to write"
    assert list(folder.iterdir()) == [] and not (tmp_path / "models.partial").exists()


def test_output_name_too_long_reports_the_real_error(ckpt, tmp_path, capsys):
    out = tmp_path / ("m" * 250 + ".gguf")  # 255 characters: OUT.partial is too long
    err = convert_fails(ckpt, out, capsys)
    assert "File name too long" in err and os.fsencode(out.name + ".partial") not in map(os.fsencode, os.listdir(tmp_path))


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
@pytest.mark.parametrize("quant", [None, "Q8_0"])
def test_output_that_is_one_of_the_inputs(ckpt, tmp_path, capsys, name, quant):
    before = (ckpt / name).read_bytes()
    out = ckpt / name
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(ckpt), "-o", str(out), "--no-progress", *(["--quant", quant] if quant else [])])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"edgeds: error: {out}: is an input of this run ({out}); write the output somewhere else"
    assert (ckpt / name).read_bytes() == before
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                      "tokenizer_config.json"]


def test_deepseek_config_using_more_experts_than_it_has():
    """llama.cpp asserts n_expert_used <= n_expert while loading: refuse such a config up front."""
    from edgeds.convert.arch import deepseek2
    from edgeds.errors import ConversionError

    cfg = {"architectures": ["DeepseekV3ForCausalLM"], "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
           "n_routed_experts": 4, "num_experts_per_tok": 6}
    with pytest.raises(ConversionError, match="num_experts_per_tok 6 is more than n_routed_experts 4"):
        deepseek2.metadata(cfg)
