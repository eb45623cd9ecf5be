"""`edgeds imatrix`: importance matrices through llama.cpp's eval callback, their files, and their use.

- The accumulation against loops written the way llama.cpp's imatrix.cpp writes them (dense,
  per-head, broadcast and routed-expert multiplications).
- The GGUF format as gguf-py reads it, and llama.cpp's legacy .dat layout written here byte by
  byte after imatrix.cpp's save_imatrix_legacy; hostile files of both kinds.
- The eval callback live on SmolLM2, and the command line.
- Parity (slow): on the tiny Qwen2 and DeepSeek-V3 models converted to F32 by edgeds, the mean
  square of every input column of every linear layer against the same quantity hooked out of
  transformers' float32 forward pass on the same tokens; routed experts per expert.
- Quantization (slow): IQ2_XXS of the tiny MoE with the computed matrix, with a legacy one, and a
  REPO:FILE imatrix from a fake hub.
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeds.errors import EdgedsError
from edgeds.llamacpp.eval_callback import WeightProduct
from edgeds.measure.imatrix import (
    Accumulator,
    Entry,
    Imatrix,
    ImatrixError,
    calibration_chunks,
    calibration_text,
    compute_imatrix,
    read_imatrix,
    resolve_imatrix,
)


def run_cli(*args) -> tuple[int, str, str]:
    """`edgeds ARGS` in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from edgeds.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- accumulation, against imatrix.cpp's loops


def reference_dense(weight_ne, x):
    """imatrix.cpp's MUL_MAT branch: values per matrix (i3 % ne03, i2 % ne02), one count."""
    ne02, ne03 = weight_ne[2], weight_ne[3]
    ne13, ne12, ne11, ne10 = x.shape
    values = np.zeros(ne10 * ne02 * ne03)
    for i3 in range(ne13):
        for i2 in range(ne12):
            mat = (i3 % ne03) * ne02 + (i2 % ne02)
            for row in range(ne11):
                values[mat * ne10:(mat + 1) * ne10] += x[i3, i2, row].astype(np.float64) ** 2
    return values, ne11 * ne12 * ne13 // (ne02 * ne03)


def reference_experts(n_as, x, ids):
    """imatrix.cpp's MUL_MAT_ID branch: per expert, the rows of the slots routed to it."""
    _, n_tokens, ne11, ne10 = x.shape
    values, counts = np.zeros((n_as, ne10)), np.zeros(n_as)
    for idx in range(ids.shape[1]):
        for row in range(n_tokens):
            ex = ids[row, idx]
            values[ex] += x[0, row, idx % ne11].astype(np.float64) ** 2
            counts[ex] += 1
    return values, counts


def test_dense_and_per_head_sums_match_llama_cpp_loops():
    rng = np.random.default_rng(0)
    acc = Accumulator()
    x = rng.normal(size=(1, 1, 7, 5)).astype(np.float32)
    acc.add(WeightProduct("blk.0.attn_q.weight", (5, 3, 1, 1), x, None))
    acc.add(WeightProduct("blk.0.attn_q.weight", (5, 3, 1, 1), 2 * x, None))
    want, rows = reference_dense((5, 3, 1, 1), x)
    entry = acc.entries()["blk.0.attn_q.weight"]
    np.testing.assert_allclose(entry.sums.reshape(-1), 5 * want, rtol=1e-6)  # x² + (2x)²
    assert entry.counts.tolist() == [2 * rows]
    half = x.astype(np.float16)  # F16 activations, where a backend hands those over
    acc.add(WeightProduct("blk.0.ffn_up.weight", (5, 3, 1, 1), half, None))
    want, _ = reference_dense((5, 3, 1, 1), half.astype(np.float32))
    np.testing.assert_allclose(acc.entries()["blk.0.ffn_up.weight"].sums.reshape(-1), want, rtol=1e-6)
    # a weight of 4 heads (MLA's attn_k_b) with a permuted, non-contiguous input, as llama.cpp hands it over
    heads = np.ascontiguousarray(rng.normal(size=(6, 4, 3)).astype(np.float32)).transpose(1, 0, 2)[None]
    assert not heads.flags.c_contiguous
    acc.add(WeightProduct("blk.0.attn_k_b.weight", (3, 8, 4, 1), heads, None))
    want, rows = reference_dense((3, 8, 4, 1), heads)
    entry = acc.entries()["blk.0.attn_k_b.weight"]
    np.testing.assert_allclose(entry.sums.reshape(-1), want, rtol=1e-6)
    assert entry.counts.tolist() == [rows] and rows == 6
    # inputs broadcast over the weight's matrices (ne12 = 2 × ne02)
    wide = rng.normal(size=(1, 4, 3, 2)).astype(np.float32)
    acc.add(WeightProduct("blk.1.x.weight", (2, 2, 2, 1), wide, None))
    want, rows = reference_dense((2, 2, 2, 1), wide)
    np.testing.assert_allclose(acc.entries()["blk.1.x.weight"].sums.reshape(-1), want, rtol=1e-6)
    assert acc.entries()["blk.1.x.weight"].counts.tolist() == [rows] == [6]


@pytest.mark.parametrize("slots_in_input", [1, 3])  # gate/up read one row per token, down one per slot
def test_expert_sums_only_over_routed_rows(slots_in_input):
    rng = np.random.default_rng(slots_in_input)
    n_as, n_tokens, n_used, n_in = 6, 9, 3, 4
    ids = np.stack([rng.choice(5, size=n_used, replace=False) for _ in range(n_tokens)]).astype(np.int32)
    x = rng.normal(size=(1, n_tokens, slots_in_input, n_in)).astype(np.float32)
    acc = Accumulator()
    acc.add(WeightProduct("blk.1.ffn_gate_exps.weight", (n_in, 2, n_as, 1), x, ids))
    want, counts = reference_experts(n_as, x, ids)
    entry = acc.entries()["blk.1.ffn_gate_exps.weight"]
    np.testing.assert_allclose(entry.sums, want, rtol=1e-6)
    assert entry.counts.tolist() == counts.tolist() and counts[5] == 0 and counts.sum() == n_tokens * n_used
    mean = entry.mean()
    assert (mean[5] == 1.0).all()  # an expert no row reached: llama-quantize's flat importance
    np.testing.assert_allclose(mean[:5], want[:5] / counts[:5, None], rtol=1e-6)
    assert Imatrix(acc.entries()).unseen() == ["blk.1.ffn_gate_exps.weight"]


def test_bad_products_are_errors_naming_the_weight():
    acc = Accumulator()
    x = np.ones((1, 1, 2, 3), np.float32)
    with pytest.raises(ImatrixError, match="blk.0.a.weight: inputs of 3 columns for a weight of 4"):
        acc.add(WeightProduct("blk.0.a.weight", (4, 2, 1, 1), x, None))
    with pytest.raises(ImatrixError, match="blk.0.b.weight: its inputs hold non-finite values"):
        acc.add(WeightProduct("blk.0.b.weight", (3, 2, 1, 1), np.full_like(x, np.inf), None))
    with pytest.raises(ImatrixError, match="blk.0.c.weight: an expert id outside 0..3"):
        acc.add(WeightProduct("blk.0.c.weight", (3, 2, 4, 1), x.reshape(1, 2, 1, 3), np.array([[4], [0]], np.int32)))
    acc.add(WeightProduct("blk.0.d.weight", (3, 2, 1, 1), x, None))
    with pytest.raises(ImatrixError, match=r"blk.0.d.weight: inputs of shape \(1, 6\), earlier \(1, 3\)"):
        acc.add(WeightProduct("blk.0.d.weight", (3, 2, 2, 1), np.ones((1, 2, 2, 3), np.float32), None))


# ---------------------------------------------------------------- files


def sample_imatrix() -> Imatrix:
    rng = np.random.default_rng(7)
    return Imatrix({
        "blk.0.attn_q.weight": Entry(rng.uniform(0, 50, size=(1, 8)), np.array([40.0])),
        "blk.1.ffn_up_exps.weight": Entry(rng.uniform(0, 9, size=(4, 8)), np.array([10.0, 0.0, 25.0, 5.0])),
    }, ("corpus.txt",), chunk_count=2, chunk_size=20)


def test_gguf_file_is_what_llama_imatrix_writes(tmp_path):
    from gguf import GGUFReader

    path = sample_imatrix().write(tmp_path / "imatrix.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imatrix.gguf"]  # no .partial left
    reader = GGUFReader(path)  # gguf-py, independently of edgeds' reader
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields == {"general.type": "imatrix", "imatrix.datasets": ["corpus.txt"], "imatrix.chunk_count": 2,
                      "imatrix.chunk_size": 20}
    tensors = {t.name: (t.tensor_type.name, list(t.shape)) for t in reader.tensors}
    assert tensors == {  # ggml order: ne0 first, as ggml_new_tensor_2d(n_in, n_mat) and (1, n_mat)
        "blk.0.attn_q.weight.in_sum2": ("F32", [8, 1]), "blk.0.attn_q.weight.counts": ("F32", [1, 1]),
        "blk.1.ffn_up_exps.weight.in_sum2": ("F32", [8, 4]), "blk.1.ffn_up_exps.weight.counts": ("F32", [1, 4]),
    }
    back = read_imatrix(path)
    assert (back.datasets, back.chunk_count, back.chunk_size, back.legacy) == (("corpus.txt",), 2, 20, False)
    for (name, got), (want_name, want) in zip(back.importance(), sample_imatrix().importance()):
        assert name == want_name
        np.testing.assert_allclose(got, want, rtol=1e-6)


def write_legacy_dat(path: Path, stats: dict[str, tuple[np.ndarray, np.ndarray]], chunk_size: int,
                     last_chunk: int, dataset: str | None) -> None:
    """imatrix.cpp's save_imatrix_legacy, step by step: entries in name order, ncall = ceil(max count
    / chunk_size), values (sum / count) × ncall (1 × ncall where the count is 0), then the chunk
    count and the dataset name (left out entirely when `dataset` is None: that part is optional)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(stats)))
        for name in sorted(stats):
            values, counts = stats[name]
            f.write(struct.pack("<i", len(name.encode())) + name.encode())
            ncall = (int(counts.max()) + chunk_size - 1) // chunk_size
            f.write(struct.pack("<ii", ncall, values.size))
            per = values.size // counts.size
            tmp = []
            for i, value in enumerate(values.reshape(-1)):
                count = counts[i // per]
                if count == 0:
                    value, count = 1.0, 1.0
                tmp.append(value / count * ncall)
            f.write(np.array(tmp, "<f4").tobytes())
        if dataset is not None:
            f.write(struct.pack("<i", last_chunk))
            f.write(struct.pack("<i", len(dataset.encode())) + dataset.encode())


@pytest.mark.parametrize("dataset", ["wiki.train.raw", None])
def test_legacy_dat_reads_as_llama_quantize_reads_it(tmp_path, dataset):
    sample = sample_imatrix()
    stats = {name: (e.sums.reshape(-1), e.counts) for name, e in sample.entries.items()}
    write_legacy_dat(tmp_path / "imatrix.dat", stats, chunk_size=20, last_chunk=2, dataset=dataset)
    legacy = read_imatrix(tmp_path / "imatrix.dat")
    assert legacy.legacy and legacy.chunk_count == (2 if dataset else 0)
    assert legacy.datasets == ((dataset,) if dataset else ())
    got = dict(legacy.importance())
    # the same importance as from the GGUF form: means per column, 1.0 for the expert without data
    for name, want in sample.importance():
        np.testing.assert_allclose(got[name], want, rtol=1e-6)
    assert (got["blk.1.ffn_up_exps.weight"].reshape(4, 8)[1] == 1.0).all()


def legacy_bytes(*entries, tail=b"") -> bytes:
    """A legacy file: (name bytes, ncall, nval, values) entries after the entry count."""
    out = struct.pack("<i", len(entries))
    for name, ncall, nval, values in entries:
        out += struct.pack("<i", len(name)) + name + struct.pack("<ii", ncall, nval) + np.array(values, "<f4").tobytes()
    return out + tail


GOOD = (b"blk.0.attn_q.weight", 1, 2, [1.0, 2.0])
HOSTILE_LEGACY = {
    "empty": (b"", "no entries"),
    "zero entries": (struct.pack("<i", 0), "no entries"),
    "negative entry count": (struct.pack("<i", -5), "no entries"),
    "fewer entries than announced": (struct.pack("<i", 2) + legacy_bytes(GOOD)[4:], "truncated legacy imatrix"),
    "negative name length": (struct.pack("<ii", 1, -4), "entry 1 has a name of -4 bytes"),
    "huge name length": (struct.pack("<ii", 1, 1 << 30), "entry 1 has a name of 1073741824 bytes"),
    "name past the end": (struct.pack("<ii", 1, 40) + b"blk", "truncated legacy imatrix"),
    "no values": (legacy_bytes((b"blk.0.a.weight", 1, 0, [])), "blk.0.a.weight: 0 values"),
    "values past the end": (legacy_bytes((b"blk.0.a.weight", 1, 2**31 - 1, [1.0])), "truncated legacy imatrix"),
    "negative ncall": (legacy_bytes((b"blk.0.a.weight", -1, 1, [1.0])), "ncall -1"),
    "NaN value": (legacy_bytes((b"blk.0.a.weight", 1, 2, [1.0, math.nan])), "negative or non-finite"),
    "negative value": (legacy_bytes((b"blk.0.a.weight", 1, 1, [-1.0])), "negative or non-finite"),
    "name twice": (legacy_bytes(GOOD, GOOD), "blk.0.attn_q.weight appears twice"),
    "name not UTF-8": (legacy_bytes((b"\xff\xfe", 1, 1, [1.0])), "entry 1's name is not UTF-8"),
}


@pytest.mark.parametrize("case", HOSTILE_LEGACY)
def test_hostile_legacy_files_are_one_line_errors(tmp_path, case):
    data, message = HOSTILE_LEGACY[case]
    path = tmp_path / "bad.dat"
    path.write_bytes(data)
    with pytest.raises(ImatrixError) as err:
        read_imatrix(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def write_gguf(path: Path, tensors: dict[str, np.ndarray], **keys) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch="")
    for key, value in keys.items():
        writer.add_uint32(key, value)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


SUMS = np.ones((2, 4), np.float32)
COUNTS = np.array([[3.0], [1.0]], np.float32)
HOSTILE_GGUF = {
    "sums without counts": ({"a.weight.in_sum2": SUMS}, "a.weight.counts is missing"),
    "counts without sums": ({"a.weight.in_sum2": SUMS, "a.weight.counts": COUNTS, "b.weight.counts": COUNTS},
                            "tensor b.weight.counts is neither"),
    "another tensor": ({"a.weight.in_sum2": SUMS, "a.weight.counts": COUNTS, "token_embd.weight": SUMS},
                       "tensor token_embd.weight is neither"),
    "F16 sums": ({"a.weight.in_sum2": SUMS.astype(np.float16), "a.weight.counts": COUNTS}, "imatrix tensors are F32"),
    "counts do not split the sums": ({"a.weight.in_sum2": np.ones((1, 5), np.float32),
                                      "a.weight.counts": COUNTS}, "5 sums do not split into 2 matrices"),
    "negative count": ({"a.weight.in_sum2": SUMS, "a.weight.counts": -COUNTS}, "negative or non-finite"),
    "infinite sum": ({"a.weight.in_sum2": SUMS * np.inf, "a.weight.counts": COUNTS}, "negative or non-finite"),
    "no tensors": ({}, "no imatrix entries"),
}


@pytest.mark.parametrize("case", HOSTILE_GGUF)
def test_hostile_gguf_imatrices_are_one_line_errors(tmp_path, case):
    tensors, message = HOSTILE_GGUF[case]
    path = write_gguf(tmp_path / "bad.gguf", tensors)
    with pytest.raises(ImatrixError) as err:
        read_imatrix(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_truncated_gguf_and_unreadable_paths(tmp_path):
    good = sample_imatrix().write(tmp_path / "good.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ImatrixError, match=r"cut.gguf: not a GGUF imatrix \(truncated GGUF file"):
        read_imatrix(cut)
    with pytest.raises(ImatrixError, match="cannot read the imatrix"):
        read_imatrix(tmp_path)
    with pytest.raises(ImatrixError, match=r"missing.gguf: no such imatrix file \(or use REPO:FILE"):
        resolve_imatrix(tmp_path / "missing.gguf")
    with pytest.raises(EdgedsError, match="acme/imx/x.gguf is not downloaded and HF_HUB_OFFLINE is set"):
        resolve_imatrix("acme/imx:x.gguf")  # the test session is offline (conftest)
    assert resolve_imatrix(good) == good


# ---------------------------------------------------------------- the eval callback, live


def test_tap_sees_every_weight_matmul_and_passes_errors_out(smollm2_path):
    from edgeds.catalog.gguf import read_file
    from edgeds.llamacpp.binding import Context, Model
    from edgeds.llamacpp.eval_callback import WeightTap

    seen: dict[str, tuple] = {}

    def record(p: WeightProduct) -> None:
        seen[p.weight] = (p.weight_shape[:2], p.inputs.shape, p.inputs.dtype)

    model = Model(smollm2_path)
    tap = WeightTap(record, lambda name: name.startswith("blk."))
    ctx = Context(model, n_ctx=64, n_batch=64, eval_callback=tap.callback)
    tokens = model.tokenize("The quick brown fox jumps over the lazy dog.")
    ctx.decode([(t, i, 0, True) for i, t in enumerate(tokens)])
    tap.raise_pending()
    matrices = {t.name: tuple(reversed(t.shape)) for t in read_file(smollm2_path).tensors
                if t.name.startswith("blk.") and len(t.shape) == 2}
    assert set(seen) == set(matrices) and len(matrices) == 30 * 7
    for name, (ne, inputs, dtype) in seen.items():
        assert ne == matrices[name] and inputs == (1, 1, len(tokens), ne[0]) and dtype == np.float32, name

    def fail(p: WeightProduct) -> None:
        raise ValueError(f"stop at {p.weight}")

    failing = WeightTap(fail, lambda name: name == "blk.3.ffn_up.weight")
    ctx2 = Context(model, n_ctx=64, n_batch=64, eval_callback=failing.callback)
    ctx2.decode([(t, i, 0, True) for i, t in enumerate(tokens)])
    with pytest.raises(ValueError, match="stop at blk.3.ffn_up.weight"):
        failing.raise_pending()
    failing.raise_pending()  # raised once, then cleared
    ctx.close(), ctx2.close(), model.close()


# ---------------------------------------------------------------- the command line


def test_cli_writes_an_imatrix_of_every_layer(smollm2_path, tmp_path):
    out = tmp_path / "smol-imatrix.gguf"
    code, stdout, stderr = run_cli("imatrix", smollm2_path, "--chunk-size", 32, "--chunks", 2, "-o", out)
    assert code == 0, stderr
    result = read_imatrix(out)
    assert (result.datasets, result.chunk_count, result.chunk_size) == (("edgeds/calibration.txt",), 2, 32)
    assert len(result.entries) == 30 * 7
    assert all(e.counts.tolist() == [64.0] for e in result.entries.values())  # 2 chunks × 32 tokens
    ppl = float(stdout.split("perplexity ")[1])
    assert f"{out}: 210 weights, 2 chunks of 32 tokens" in stdout and 1 < ppl < 1e4
    assert "CPU" in stderr  # the placement line


def test_calibration_text_is_multilingual_code_math_and_reasoning():
    text = calibration_text()
    assert 20_000 < len(text.encode()) < 64_000
    for marker in ("def ", "#include", "fn main", "SELECT", "\\int", "<think>", "的", "の", "Утром",
                   "é", "ü", "ñ"):
        assert marker in text, marker


def cli_error(*args) -> str:
    code, _, stderr = run_cli("imatrix", *args)
    lines = stderr.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("edgeds: error: "), stderr
    return lines[0]


def test_cli_errors_are_one_line(smollm2_path, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words.")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    out = tmp_path / "o.gguf"
    assert "--chunk-size 8: use at least 16" in cli_error(smollm2_path, "--chunk-size", 8, "-o", out)
    assert f"{short}: " in cli_error(smollm2_path, "--text", short, "-o", out)
    assert "fewer than one chunk of 512" in cli_error(smollm2_path, "--text", short, "-o", out)
    assert f"{latin1}: cannot read it as UTF-8" in cli_error(smollm2_path, "--text", latin1, "-o", out)
    assert "trained on contexts of 8192 tokens" in cli_error(smollm2_path, "--chunk-size", 100000, "-o", out)
    assert "does not exist" in cli_error(smollm2_path, "-o", tmp_path / "no" / "o.gguf")
    assert "is a folder" in cli_error(smollm2_path, "-o", tmp_path)
    assert "is the model" in cli_error(smollm2_path, "-o", smollm2_path)
    assert "no such file" in cli_error(tmp_path / "missing.gguf", "-o", out)
    assert str(not_gguf) in cli_error(not_gguf, "-o", out)
    assert "--moe-offload 'most'" in cli_error(smollm2_path, "--moe-offload", "most", "-o", out)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_quantize_reports_a_bad_imatrix_in_one_line(smollm2_path, tmp_path):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(struct.pack("<ii", 1, -3))
    code, _, stderr = run_cli("quantize", smollm2_path, tmp_path / "q.gguf", "Q4_0", "--imatrix", bad)
    assert code != 0 and stderr.strip() == f"edgeds: error: {bad}: entry 1 has a name of -3 bytes"
    # a well-formed imatrix of another model: llama.cpp's own check, reported in one line
    other = Imatrix({"blk.0.attn_q.weight": Entry(np.ones((1, 7)), np.array([1.0]))}, ("x",), 1, 1)
    other.write(tmp_path / "other.gguf")
    code, _, stderr = run_cli("quantize", smollm2_path, tmp_path / "q.gguf", "Q4_0", "--allow-requantize",
                              "--imatrix", tmp_path / "other.gguf")
    assert code != 0 and len(stderr.strip().splitlines()) == 1
    assert "imatrix size 7 is different from tensor size 576 for blk.0.attn_q.weight" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.dat", "other.gguf"]


# ---------------------------------------------------------------- parity with transformers (slow)

# HF module (under model.layers.N.) → GGUF weight (under blk.N.): edgeds' converter tables
def linear_map(*tables) -> dict[str, str]:
    out = {}
    for table in tables:
        for hf, gguf in table.items():
            if hf.endswith(".weight"):
                out[hf.removesuffix(".weight")] = gguf if isinstance(gguf, str) else gguf[0]
    return out


class HfActivations:
    """Sums of squared inputs of every converted linear layer (a module with a 2-D weight: nn.Linear,
    DeepSeek's router) of a transformers model, keyed by the GGUF weight the converter makes of it,
    collected with forward hooks."""

    def __init__(self, model, linear: dict[str, str], experts: dict[str, str] | None = None):
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.config = model.config
        for name, module in model.named_modules():
            parts = name.split(".")
            if len(parts) < 4 or parts[:2] != ["model", "layers"]:
                continue
            layer, rest = parts[2], ".".join(parts[3:])
            weight = getattr(module, "weight", None)
            if rest in linear and weight is not None and weight.ndim == 2:  # not the norms
                module.register_forward_hook(self._linear(f"blk.{layer}.{linear[rest]}", rest))
            elif experts and rest == "mlp.experts":
                module.register_forward_hook(self._experts(layer, experts))

    def add(self, key: str, x, matrices: int = 1, matrix: int = 0) -> None:
        x = x.detach().double().reshape(-1, x.shape[-1]).numpy()
        if key not in self.sums:
            self.sums[key] = np.zeros((matrices, x.shape[1]))
            self.counts[key] = np.zeros(matrices)
        self.sums[key][matrix] += (x ** 2).sum(axis=0)
        self.counts[key][matrix] += x.shape[0]

    def _linear(self, key: str, module_name: str):
        def hook(module, args, output):
            self.add(key, args[0])
            if module_name == "self_attn.q_b_proj":  # attn_k_b multiplies each head's query (its nope part)
                cfg = self.config
                heads = output.reshape(-1, cfg.num_attention_heads, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
                for h in range(cfg.num_attention_heads):
                    self.add(key.replace("attn_q_b", "attn_k_b"), heads[:, h, :cfg.qk_nope_head_dim],
                             cfg.num_attention_heads, h)
        return hook

    def _experts(self, layer: str, names: dict[str, str]):
        """transformers 5 keeps the experts fused: an expert's input is the hidden state of the tokens
        routed to it; down_proj's is act(gate) · up of those, from the module's own weights."""
        import torch

        def hook(module, args, output):
            hidden, top_k_index, _ = args
            for e in range(module.num_experts):
                x = hidden[(top_k_index == e).any(dim=-1)]
                gate, up = torch.nn.functional.linear(x, module.gate_up_proj[e]).chunk(2, dim=-1)
                inputs = {"gate_proj": x, "up_proj": x, "down_proj": module.act_fn(gate) * up}
                for proj, gguf in names.items():
                    self.add(f"blk.{layer}.{gguf}", inputs[proj], module.num_experts, e)
        return hook


def hf_reference(hf_folder: Path, chunks, linear, experts=None) -> tuple[HfActivations, float]:
    """Hooked activations and the perplexity of the chunks' second halves, from transformers in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    model.eval()
    acts = HfActivations(model, linear, experts)
    nll, scored = 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            logits = model(torch.tensor([chunk])).logits[0].double()
            first = len(chunk) // 2
            logp = torch.log_softmax(logits[first:-1], dim=-1)
            nll -= logp[torch.arange(len(chunk) - 1 - first), torch.tensor(chunk[first + 1:])].sum().item()
            scored += len(chunk) - 1 - first
    return acts, math.exp(nll / scored)


def compare(imatrix: Imatrix, acts: HfActivations) -> set[str]:
    """Every weight both measured: per matrix, the columns' mean squares within 1e-3 (relative) and
    the same row counts. Returns the GGUF names compared."""
    for name, sums in acts.sums.items():
        entry = imatrix.entries[name]
        counts = acts.counts[name]
        got = entry.mean().reshape(len(counts), -1)
        want = sums / counts[:, None]
        # per expert; one count for a weight of several matrices (per-head attn_k_b), as llama-imatrix keeps it
        assert entry.counts.tolist() == (counts.tolist() if len(entry.counts) > 1 else [counts[0]]), name
        assert np.max(np.abs(got - want) / want) < 1e-3, name
    return set(acts.sums)


CHUNK, N_CHUNKS = 64, 3


def measured(gguf: Path):
    from edgeds.llamacpp.binding import LoadOptions, Model

    text = calibration_text()
    imatrix, ppl = compute_imatrix(gguf, text, dataset="calibration", chunk_size=CHUNK, max_chunks=N_CHUNKS)
    vocab = Model(gguf, LoadOptions(vocab_only=True))
    return imatrix, ppl, calibration_chunks(vocab, text, CHUNK, N_CHUNKS)


@pytest.fixture(scope="module")
def qwen2_imatrix(tiny_r1_gguf, tmp_path_factory):
    imatrix, ppl, chunks = measured(tiny_r1_gguf)
    return imatrix, ppl, chunks, imatrix.write(tmp_path_factory.mktemp("qwen2-imatrix") / "imatrix.gguf")


@pytest.mark.slow
def test_parity_with_transformers_on_tiny_qwen2(tiny_r1_hf, qwen2_imatrix):
    from edgeds.convert.arch import _dense

    imatrix, ppl, chunks, _ = qwen2_imatrix
    acts, hf_ppl = hf_reference(tiny_r1_hf, chunks, linear_map(_dense.LAYER))
    compared = compare(imatrix, acts)
    assert compared == set(imatrix.entries) and len(compared) == 2 * 7  # q k v o gate up down, 2 layers
    assert all(e.counts[0] == CHUNK * N_CHUNKS for e in imatrix.entries.values())
    assert abs(ppl - hf_ppl) / hf_ppl < 1e-3


@pytest.fixture(scope="module")
def tiny_v3(tmp_path_factory):
    from edgeds.convert import convert
    from tests.tiny_moe_checkpoints import build_deepseek_v3

    folder = tmp_path_factory.mktemp("tiny-v3-imatrix")
    hf = build_deepseek_v3(folder / "hf")
    return hf, Path(convert(hf, folder / "tiny-v3-f32.gguf", outtype="f32", progress=False))


@pytest.mark.slow
def test_parity_with_transformers_on_tiny_deepseek_v3(tiny_v3):
    """Every linear layer llama.cpp multiplies by one to one, routed experts per expert. Not
    comparable: kv_b_proj, which llama.cpp splits into attn_k_b (compared against each head's
    query, which it multiplies in the absorbed MLA form) and attn_v_b, which multiplies the
    attention output in the compressed latent space that transformers never forms."""
    from edgeds.convert.arch import deepseek2

    hf, gguf = tiny_v3
    imatrix, ppl, chunks = measured(gguf)
    experts = {proj.removesuffix(".weight"): gguf_name for proj, gguf_name in deepseek2.EXPERTS.items()}
    linear = linear_map(deepseek2.ATTENTION, deepseek2.DENSE_FFN, deepseek2.MOE_HOT)
    acts, hf_ppl = hf_reference(hf, chunks, linear, experts)
    compared = compare(imatrix, acts)
    layers = range(3)
    assert set(imatrix.entries) - compared == {f"blk.{i}.attn_v_b.weight" for i in layers}
    for i in (1, 2):
        routed = imatrix.entries[f"blk.{i}.ffn_gate_exps.weight"].counts
        assert routed.sum() == CHUNK * N_CHUNKS * 2 and len(routed) == 8  # top-2 of 8 experts
        assert f"blk.{i}.ffn_down_exps.weight" in compared and f"blk.{i}.ffn_gate_inp.weight" in compared
    assert {f"blk.{i}.attn_k_b.weight" for i in layers} <= compared
    assert abs(ppl - hf_ppl) / hf_ppl < 1e-3


# ---------------------------------------------------------------- quantizing with it (slow)


@pytest.fixture(scope="module")
def wide_moe(tmp_path_factory):
    from edgeds.convert import convert
    from tests.quant.conftest import build_wide_v3

    folder = tmp_path_factory.mktemp("wide-v3-imatrix")
    return Path(convert(build_wide_v3(folder / "hf"), folder / "wide-v3-f16.gguf", "f16", progress=False))


@pytest.mark.slow
def test_iq2_xxs_of_the_tiny_moe_needs_and_uses_the_imatrix(wide_moe, tmp_path):
    from edgeds.catalog.gguf import read_file
    from edgeds.convert.quantize import QuantizeError, quantize

    code, _, stderr = run_cli("imatrix", wide_moe, "--chunk-size", 64, "--chunks", 4, "-o", tmp_path / "imx.gguf")
    assert code == 0, stderr
    with pytest.raises(QuantizeError, match="IQ2_XXS needs an importance matrix"):
        quantize(wide_moe, tmp_path / "none.gguf", "IQ2_XXS")
    measured_q = quantize(wide_moe, tmp_path / "measured.gguf", "IQ2_XXS", imatrix=tmp_path / "imx.gguf")
    # the same weights with a flat importance, as a legacy .dat file: other expert bytes
    flat = {name: (np.ones(e.sums.size), np.ones(e.counts.size)) for name, e in read_imatrix(tmp_path / "imx.gguf").entries.items()}
    write_legacy_dat(tmp_path / "flat.dat", flat, chunk_size=64, last_chunk=4, dataset="flat")
    flat_q = quantize(wide_moe, tmp_path / "flat.gguf", "IQ2_XXS", imatrix=tmp_path / "flat.dat")
    a, b = read_file(measured_q), read_file(flat_q)
    for name in ("blk.1.ffn_gate_exps.weight", "blk.2.ffn_up_exps.weight"):
        assert a.tensor(name).ggml_type == "IQ2_XXS"
        assert bytes(a.data(name)) != bytes(b.data(name)), name


def hub_edgeds(args, hub_url: str, hf_home: Path):
    env = dict(os.environ, HF_ENDPOINT=hub_url, HF_HOME=str(hf_home), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1")
    return subprocess.run([sys.executable, "-m", "edgeds", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_imatrix_from_a_hub_repo(tiny_r1_gguf, qwen2_imatrix, tmp_path):
    from tests.hub_server import FakeHub

    hub = FakeHub().start()
    try:
        hub.add("acme/tiny-imatrix", "imatrix.gguf", qwen2_imatrix[3].read_bytes())
        out = hub_edgeds(["quantize", tiny_r1_gguf, tmp_path / "q4.gguf", "Q4_0", "--imatrix",
                          "acme/tiny-imatrix:imatrix.gguf"], hub.url, tmp_path / "hf")
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "q4.gguf").is_file()
        cached = list((tmp_path / "hf").rglob("snapshots/*/imatrix.gguf"))
        assert len(cached) == 1 and cached[0].read_bytes() == qwen2_imatrix[3].read_bytes()
        missing = hub_edgeds(["quantize", tiny_r1_gguf, tmp_path / "q4b.gguf", "Q4_0", "--imatrix",
                              "acme/tiny-imatrix:nope.gguf"], hub.url, tmp_path / "hf")
        assert missing.returncode != 0
        assert missing.stderr.strip().splitlines() == [
            "edgeds: error: acme/tiny-imatrix/nope.gguf: no such file in the repository (revision main)"]
        assert not (tmp_path / "q4b.gguf").exists()
    finally:
        hub.stop()
