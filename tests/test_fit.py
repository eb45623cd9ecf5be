"""The fit estimate against the buffer sizes llama.cpp itself reports when it loads a model
(its log: "CPU_Mapped model buffer size", "KV buffer size", "compute buffer size"), on the
real SmolLM2, the tiny R1-tokenizer Qwen2 and a tiny DeepSeek-V3 (MLA + MoE) model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgeds.machine import fit
from edgeds.machine.memory import Geometry
from edgeds.catalog.gguf import read_gguf
from edgeds.catalog.registry import load_registry

MiB = 1 << 20


def measured_buffers(path: Path, n_ctx: int) -> dict[str, float]:
    from edgeds.llamacpp.backend import captured_llama_log
    from edgeds.llamacpp.binding import Context, Model

    with captured_llama_log() as log:
        model = Model(path)
        ctx = Context(model, n_ctx=n_ctx, n_batch=512)
    text = "".join(log)
    ctx.close()
    model.close()
    found = {kind: sum(float(x) for x in re.findall(rf"{pattern} buffer size =\s+([\d.]+) MiB", text))
             for kind, pattern in (("weights", r"\w+_Mapped model"), ("kv", r"KV"),
                                   ("compute", r"compute"), ("output", r"output"))}
    assert all(found[k] > 0 for k in ("weights", "kv", "compute")), text[-2000:]
    return {k: v * MiB for k, v in found.items()}


def check(path: Path, n_ctx: int) -> None:
    got = measured_buffers(path, n_ctx)
    est = fit.Footprint.from_gguf(read_gguf(path)).estimate(n_ctx)
    pairs = {"weights": est.weights, "kv": est.kv_cache, "compute": est.compute}
    for kind, value in pairs.items():
        assert abs(value - got[kind]) <= 0.10 * got[kind] + 0.01 * MiB, (kind, value / MiB, got[kind] / MiB)
    measured_total = sum(got.values())
    estimated_total = est.weights + est.kv_cache + est.compute + est.output
    assert abs(estimated_total - measured_total) <= 0.10 * measured_total


@pytest.mark.parametrize("n_ctx", [512, 4096])
def test_estimate_matches_llama_cpp_on_smollm2(smollm2_path, n_ctx):
    check(smollm2_path, n_ctx)


def test_estimate_matches_llama_cpp_on_tiny_r1(tiny_r1_gguf):
    check(tiny_r1_gguf, 2048)


@pytest.fixture(scope="module")
def tiny_deepseek_v3_gguf(tmp_path_factory) -> Path:
    from edgeds.convert import convert
    from tests.tiny_moe_checkpoints import build_deepseek_v3

    folder = tmp_path_factory.mktemp("tiny-v3")
    hf = build_deepseek_v3(folder / "hf")
    return Path(convert(hf, folder / "tiny-v3.gguf", outtype="f32", progress=False))


def test_mla_kv_cache_matches_llama_cpp(tiny_deepseek_v3_gguf):
    info = read_gguf(tiny_deepseek_v3_gguf)
    geom = Geometry.from_metadata(info.metadata)
    assert geom.kv_lora_rank and geom.qk_rope_head_dim
    assert info.expert_bytes > 0
    check(tiny_deepseek_v3_gguf, 4096)


def test_registry_geometry_kv_per_token():
    reg = load_registry()
    r1 = Geometry.from_shape(reg.get("r1").shape)
    assert r1.kv_bytes_per_token() == (512 + 64) * 61 * 2
    small = Geometry.from_shape(reg.get("r1-distill-qwen-1.5b").shape)
    assert small.kv_bytes_per_token() == 2 * 2 * 128 * 28 * 2


def test_plan_verdicts():
    reg = load_registry()
    GB = 10**9

    def verdict(model_id, ram, vram, quant=None):
        entry = reg.get(model_id)
        return fit.verdict(fit.Footprint.from_registry(entry, entry.quant(quant)), ram=ram, vram=vram)

    small = verdict("r1-distill-qwen-1.5b", ram=16 * GB, vram=0)
    assert small.mode == fit.CPU and small.max_ctx == 131072
    assert verdict("r1-distill-qwen-1.5b", ram=16 * GB, vram=8 * GB).mode == fit.GPU
    tight = verdict("r1-distill-qwen-7b", ram=6 * GB, vram=0)
    assert tight.mode == fit.CPU and 1024 <= tight.max_ctx < 131072
    assert tight.estimate.total <= 6 * GB
    moe = verdict("v2-lite-chat", ram=32 * GB, vram=6 * GB)
    assert moe.mode == fit.EXPERTS_OFFLOADED and moe.gpu_bytes < 6 * GB
    assert verdict("r1", ram=24 * GB, vram=0).mode == fit.NO
    assert verdict("r1-distill-llama-70b", ram=32 * GB, vram=24 * GB).mode == fit.PARTIAL


@pytest.mark.slow
def test_gguf_info_agrees_with_gguf_py_reader(smollm2_path):
    from gguf import GGUFReader

    from edgeds.catalog.gguf import read_file

    info = read_gguf(smollm2_path)
    reader = GGUFReader(smollm2_path)
    assert info.n_params == sum(int(t.n_elements) for t in reader.tensors)
    assert info.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    for kind, (count, size) in info.quant_mix.items():
        tensors = [t for t in reader.tensors if t.tensor_type.name == kind]
        assert (count, size) == (len(tensors), sum(int(t.n_bytes) for t in tensors))
    for key in ("general.architecture", "llama.block_count", "llama.context_length",
                "llama.attention.head_count_kv", "tokenizer.chat_template"):
        field = reader.fields[key]
        value = field.contents()
        assert info.metadata[key] == value, key
    assert info.metadata["tokenizer.ggml.tokens"] == f"[{len(reader.fields['tokenizer.ggml.tokens'].data)} strings]"

    header = read_file(smollm2_path, arrays=True)  # every key and array, typed; the tensors' places
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(header.metadata) == list(fields)
    for key, field in fields.items():
        assert header.metadata[key] == field.contents(), key
        assert header.value_types[key] == (field.types[0], field.types[1] if len(field.types) > 1 else None), key
    for t, ref in zip(header.tensors, reader.tensors, strict=True):
        assert (t.name, t.ggml_type, t.shape, t.offset, t.n_bytes) == (
            ref.name, ref.tensor_type.name, tuple(int(d) for d in reversed(ref.shape)), int(ref.data_offset),
            int(ref.n_bytes))
    for t, ref in list(zip(header.tensors, reader.tensors))[:4]:
        assert header.data(t.name).tobytes() == ref.data.tobytes(), t.name


@pytest.mark.slow
def test_truncated_gguf_is_one_line_error(smollm2_path, tmp_path):
    from edgeds.catalog.gguf import read_file
    from edgeds.errors import EdgedsError

    data = smollm2_path.read_bytes()
    corrupt = data[:24] + (1 << 62).to_bytes(8, "little") + data[32:]  # the first key's length
    for name, damaged in (("cut100", data[:100]), ("cut-end", data[:-1000]), ("corrupt", corrupt)):
        bad = tmp_path / f"{name}.gguf"
        bad.write_bytes(damaged)
        for read in (read_gguf, lambda p: read_file(p, arrays=True)):
            with pytest.raises(EdgedsError, match=rf"^{bad}: .*truncated[^\n]*$"):
                read(bad)
