"""Dense conversions (qwen2, llama with llama3 rope scaling, qwen3) are faithful.

Tiny random checkpoints around the real tokenizers (tests/tiny_checkpoints.py) are converted by
edgeds and run by llama.cpp on the same token ids as transformers: F32 logits agree to < 1e-2
with 100% top-1 agreement; f16/bf16/q8_0 stay close; a sharded checkpoint converts to the same
bytes as the single-file one; `--verify` reports agreement.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import numpy as np
import pytest

from edgeds.catalog.gguf import read_file
from edgeds.convert.verify import transformers_logits
from edgeds.llamacpp.logits import all_logits

torch = pytest.importorskip("torch")

PROMPT = ("The R1 distills think first: <think>\n17 × 23 = 391\n</think>\n\n391. "
          "你好，世界！ Привет, мир! def f(x): return x**2 🦊 1234567")


def _ids(folder):
    from edgeds.convert.tokenizer import reference_ids

    return reference_ids(folder, PROMPT)


def _fields(path) -> dict[str, object]:
    return read_file(path, arrays=True).metadata


def _tensors(path) -> dict[str, object]:
    return {t.name: t for t in read_file(path).tensors}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
def test_f32_logits_match_transformers(arch, dense_hf, dense_gguf):
    folder = dense_hf(arch)
    ids = _ids(folder)
    assert len(ids) > 30
    expected = transformers_logits(folder, ids)
    got = all_logits(dense_gguf(arch, "f32"), ids, n_threads=2)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-2
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    assert expected.std() > 0.5  # logits that spread, so top-1 agreement means something


@pytest.mark.slow
def test_metadata_per_architecture(dense_hf, dense_gguf):
    qwen2 = _fields(dense_gguf("qwen2"))
    assert qwen2["general.architecture"] == "qwen2"
    assert qwen2["qwen2.block_count"] == 2 and qwen2["qwen2.embedding_length"] == 64
    assert qwen2["qwen2.attention.head_count_kv"] == 2 and qwen2["qwen2.context_length"] == 131072
    assert "qwen2.rope.dimension_count" not in qwen2
    assert qwen2["tokenizer.ggml.pre"] == "deepseek-r1-qwen"
    assert len(qwen2["tokenizer.ggml.tokens"]) == 151936  # padded to the config's vocab_size
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias", "output.weight"} <= set(_tensors(dense_gguf("qwen2")))

    qwen3 = _fields(dense_gguf("qwen3"))
    assert qwen3["qwen3.attention.key_length"] == 32 and qwen3["qwen3.attention.value_length"] == 32
    assert qwen3["qwen3.rope.freq_base"] == 1000000.0
    names = set(_tensors(dense_gguf("qwen3")))
    assert {"blk.1.attn_q_norm.weight", "blk.1.attn_k_norm.weight"} <= names
    assert "output.weight" not in names and "blk.0.attn_q.bias" not in names  # tied embeddings, no biases

    llama = _fields(dense_gguf("llama"))
    assert llama["llama.vocab_size"] == 128256 and llama["llama.rope.dimension_count"] == 16
    assert llama["llama.rope.freq_base"] == 500000.0
    assert llama["tokenizer.ggml.pre"] == "llama-bpe"


@pytest.mark.slow
def test_llama3_rope_freqs_are_transformers_own_scaling(dense_hf, dense_gguf):
    """rope_freqs holds the divisor of each frequency: default inv_freq / llama3-scaled inv_freq."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = AutoConfig.from_pretrained(dense_hf("llama"))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = 1.0 / 500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    expected = (base / scaled.double()).numpy()
    got = read_file(dense_gguf("llama")).f32("rope_freqs.weight").astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[0] == 1.0 and got[-1] == 8.0 and 1.0 < got[1] < 8.0  # unscaled, scaled and blended bands


@pytest.mark.slow
def test_sharded_checkpoint_converts_to_the_same_bytes(tmp_path, dense_hf, dense_gguf):
    from edgeds.convert import convert
    from tests.tiny_checkpoints import reshard

    source = dense_hf("qwen2")
    sharded = reshard(source, tmp_path / "sharded" / source.name, shards=2)  # same folder name: same general.name
    assert len(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]) > 20
    assert len(list(sharded.glob("*.safetensors"))) == 2
    out = convert(sharded, tmp_path / "sharded.gguf", "f32", progress=False)

    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert digest(out) == digest(dense_gguf("qwen2", "f32"))


# outtype → (ggml type of the matrices, max abs logit diff allowed, top-1 agreement required)
OUTTYPES = {
    "f16": ("F16", 0.02, 1.0),
    "bf16": ("BF16", 0.15, 0.95),
    "q8_0": ("Q8_0", 0.3, 0.9),
}


@pytest.mark.slow
@pytest.mark.parametrize("outtype", list(OUTTYPES))
def test_smaller_outtypes_load_and_stay_close(outtype, dense_hf, dense_gguf):
    ggml_type, tolerance, agreement = OUTTYPES[outtype]
    path = dense_gguf("qwen2", outtype)
    tensors = _tensors(path)
    assert tensors["blk.0.attn_q.weight"].ggml_type == ggml_type
    assert tensors["token_embd.weight"].ggml_type == ggml_type
    assert tensors["blk.0.attn_norm.weight"].ggml_type == "F32"
    assert tensors["blk.0.attn_q.bias"].ggml_type == "F32"
    f32_size = dense_gguf("qwen2", "f32").stat().st_size
    assert path.stat().st_size < f32_size * (0.6 if outtype != "q8_0" else 0.35)

    folder = dense_hf("qwen2")
    ids = _ids(folder)
    expected = transformers_logits(folder, ids)
    got = all_logits(path, ids, n_threads=2)
    diff = np.abs(got - expected).max()
    assert 0 < diff < tolerance  # not bit-exact (the weights were rounded), but close
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= agreement


@pytest.mark.slow
def test_cli_verify_reports_agreement(tmp_path, dense_hf, capsys):
    from edgeds.cli import main

    out = tmp_path / "verified.gguf"
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(dense_hf("qwen2")), "-o", str(out), "--outtype", "f32", "--verify", "--no-progress"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("verify:")]
    assert lines[0].startswith("verify: tokenizer: ") and lines[0].endswith("all equal to the source tokenizer's")
    diff = float(lines[1].split("max abs diff ")[1].split(",")[0])
    assert diff < 1e-2 and lines[1].endswith("top-1 agreement 100.0%")
    assert math.isfinite(diff) and out.is_file() and not (tmp_path / "verified.gguf.partial").exists()


def test_bf16_bits_go_to_f16_exactly_as_a_float32_cast_would():
    from edgeds.convert.gguf_writer import BF16Bits, bf16_to_f16

    bits = np.arange(1 << 16, dtype=np.uint16)
    with np.errstate(over="ignore"):
        via_f32 = BF16Bits(bits).float32().astype(np.float16)
    direct = bf16_to_f16(bits)
    nan = np.isnan(via_f32)
    assert np.array_equal(np.isnan(direct), nan)
    assert np.array_equal(direct[~nan].view(np.uint16), via_f32[~nan].view(np.uint16))  # ±0, subnormals, inf too


@pytest.mark.slow
def test_bf16_checkpoint_to_f16_equals_its_float32_conversion_cast(tmp_path, dense_hf):
    """A BF16 source (as real R1 distills ship) streams its stored bits to F16 without float32."""
    from safetensors.torch import load_file, save_file

    from edgeds.convert import convert

    folder = shutil.copytree(dense_hf("qwen2"), tmp_path / "bf16")
    weights = folder / "model.safetensors"
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}
    weights.unlink()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    f16 = convert(folder, tmp_path / "f16.gguf", "f16", progress=False)
    f32 = convert(folder, tmp_path / "f32.gguf", "f32", progress=False)
    h16, h32 = read_file(f16), read_file(f32)
    checked = 0
    for t in h16.tensors:
        if t.ggml_type != "F16":  # F16 matrices only; norms and biases are F32 in both
            continue
        got = h16.data(t.name).view("<f2")
        want = h32.f32(t.name).reshape(-1).astype(np.float16)
        assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), t.name
        checked += 1
    assert checked == 2 * 7 + 2  # 7 matrices per block, embedding and output


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_tensor_data_streams_in_bounded_pieces(outtype, tmp_path, dense_hf):
    """Writing holds a few cache-sized pieces at a time, never a whole tensor (the embedding here is 37 MiB)."""
    import tracemalloc

    from edgeds.convert import _write, prepare
    from edgeds.convert.plan import PIECE_BYTES

    ckpt, plans, writer = prepare(dense_hf("qwen2"), outtype)
    largest = max(int(np.prod(p.shape)) * 4 for p in plans)
    bound = 5 * PIECE_BYTES
    assert largest > 1.5 * bound
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        _write(ckpt, plans, writer, tmp_path / "out.gguf.partial", progress=False)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < bound
