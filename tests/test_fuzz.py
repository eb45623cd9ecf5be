"""Seeded-mutation fuzzing of the readers that take files and rows from strangers: the GGUF header
reader, the safetensors header reader (and the index and config around it), and batch rows.

Each case mutates a small valid input with `random.Random(seed)`: byte flips, truncations,
insertions, duplicated spans, big integers written over length and count fields, and, for the
JSON inputs, values of the wrong JSON type put where a field was. The only outcome allowed
besides success is a one-line EdgedsError: never another exception, a hang or a signal (the
readers are pure Python, so a crash would show as an exception here). A failure names the
seed and the case, so it replays.
"""

from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path

import pytest

from edgeds.catalog.gguf import read_file, read_gguf
from edgeds.errors import EdgedsError
from edgeds.runtime.params import GenerationParams
from edgeds.serving.batch import parse_row, read_rows

SEED = 16
# Each round is one seed's worth of cases; the first runs in the quick subset, the rest are slow.
ROUNDS = [0, *(pytest.param(n, marks=pytest.mark.slow) for n in (1, 2))]
BIG = [0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
ODD_VALUES = [None, True, False, 0, -1, 1.5, float("nan"), float("inf"), 1 << 64, -(1 << 63), "", "F32", "../x",
              "/etc/passwd", "a\nb", [], [1], [-1, 2], ["F32"], [0, 1 << 70], {}, {"dtype": "F32"}, [[[[]]]]]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random byte-level changes."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(max(len(out), 1))
        kind = rng.randrange(6)
        if kind == 0:  # flip bits of a byte
            if out:
                out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            del out[at:]
        elif kind == 2:  # insert random bytes
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif kind == 3:  # a big integer over a length or count field
            out[at:at + 8] = struct.pack("<Q", rng.choice(BIG))
        elif kind == 4:  # a big 32-bit integer (types, dimension counts)
            out[at:at + 4] = struct.pack("<I", rng.choice(BIG) & 0xFFFFFFFF)
        else:  # repeat a span
            end = min(len(out), at + rng.randint(1, 64))
            out[at:at] = out[at:end]
    return bytes(out)


def field_offsets(data: bytes, names: list[str]) -> list[int]:
    """Where the bytes after each length-prefixed name start: a metadata key's value type, or a
    tensor's dimension count."""
    return [data.index(struct.pack("<Q", len(n.encode())) + n.encode()) + 8 + len(n.encode()) for n in names]


def mutate_field(data: bytes, offsets: list[int], rng: random.Random) -> bytes:
    """A value type, value, dimension, ggml type or data offset after one of `offsets` set to an
    extreme: what byte flips rarely hit (general.alignment = 0, block_count = 0xFFFFFFFF, ...)."""
    out = bytearray(data)
    at = rng.choice(offsets) + rng.choice([0, 4, 8, 12, 16, 20, 24])
    value = rng.choice(BIG + list(range(16)))
    if rng.random() < 0.5:
        out[at:at + 4] = struct.pack("<I", value & 0xFFFFFFFF)
    else:
        out[at:at + 8] = struct.pack("<Q", value)
    return bytes(out)


def mutate_json(value, rng: random.Random):
    """The value with one field somewhere replaced by an odd value, or a key added or removed."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        choice = rng.randrange(4)
        if choice == 0:
            return {k: v for k, v in value.items() if k != key}
        if choice == 1:
            return {**value, rng.choice(["x", "id", "__metadata__", key + "2"]): rng.choice(ODD_VALUES)}
        return {**value, key: mutate_json(value[key], rng) if choice == 2 else rng.choice(ODD_VALUES)}
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        return value[:i] + [mutate_json(value[i], rng)] + value[i + 1:]
    return rng.choice(ODD_VALUES)


def check(call, what: str):
    """Run `call`; only success or a one-line EdgedsError may come out."""
    try:
        return call()
    except EdgedsError as err:
        assert "\n" not in str(err), f"{what}: a multi-line error: {err!r}"
    except Exception as err:  # anything else is the bug this test looks for
        pytest.fail(f"{what}: {type(err).__name__}: {err}")
    return None


# ---------------------------------------------------------------------------------------------
# GGUF


GGUF_NAMES = ["llama.block_count", "llama.expert_count", "general.alignment", "general.name",
              "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.tokens",
              "tokenizer.ggml.token_type", "edgeds.layout.hot_bytes", "token_embd.weight", "blk.0.attn_q.weight",
              "blk.1.attn_q.weight"]


def seed_gguf(path: Path) -> bytes:
    """A small GGUF with every kind of value and a few tensor types."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_uint32("llama.expert_count", 0)
    writer.add_uint32("general.alignment", 32)
    writer.add_string("general.name", "fuzz")
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "<s>"])
    writer.add_array("tokenizer.ggml.token_type", [1, 1, 3])
    writer.add_uint64("edgeds.layout.hot_bytes", 1 << 40)
    writer.add_tensor("token_embd.weight", np.ones((4, 32), np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((2, 32), np.float16))
    writer.add_tensor("blk.1.attn_q.weight", np.zeros((2, 34), np.uint8), raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.mark.parametrize("part", ROUNDS)
def test_gguf_header_reader(tmp_path, part):
    """500 mutated GGUF files a round, half mangled as bytes, half with one field of the header
    set to an extreme; each through read_file (summaries and full arrays) and read_gguf."""
    base = seed_gguf(tmp_path / "seed.gguf")
    assert read_gguf(tmp_path / "seed.gguf").metadata["llama.block_count"] == 2
    offsets = field_offsets(base, GGUF_NAMES)
    rng = random.Random(SEED * 100 + part)
    path = tmp_path / "case.gguf"
    start, refused = time.monotonic(), 0
    for case in range(500):
        path.write_bytes(mutate(base, rng) if case % 2 else mutate_field(base, offsets, rng))
        what = f"GGUF seed {SEED * 100 + part} case {case}"
        check(lambda: read_file(path, arrays=True), what)
        refused += check(lambda: read_gguf(path), what) is None
    assert refused > 100  # the mutations do reach the checks
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------------------------------------
# safetensors


def seed_safetensors(path: Path) -> bytes:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"model.norm.weight": np.ones(8, np.float32), "model.embed_tokens.weight": np.ones((4, 8), np.float16),
               "lm_head.weight": np.zeros((4, 8), np.float32)}, str(path), metadata={"format": "pt"})
    return path.read_bytes()


def _header_parts(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack_from("<Q", data)
    return json.loads(data[8:8 + length]), data[8 + length:]


@pytest.mark.parametrize("part", ROUNDS)
def test_safetensors_header_reader(tmp_path, part):
    """600 mutated safetensors files a round: half byte-level, half JSON fields of the wrong type."""
    from edgeds.convert.checkpoint import _parse_header

    base = seed_safetensors(tmp_path / "seed.safetensors")
    header, data = _header_parts(base)
    rng = random.Random(SEED * 100 + part)
    path = tmp_path / "case.safetensors"
    start = time.monotonic()
    for case in range(600):
        if case % 2:
            text = json.dumps(mutate_json(header, rng)).encode()
            path.write_bytes(struct.pack("<Q", len(text)) + text + data)
        else:
            path.write_bytes(mutate(base, rng))
        check(lambda: _parse_header(path), f"safetensors seed {SEED * 100 + part} case {case}")
    assert time.monotonic() - start < 30


def test_checkpoint_json_files(tmp_path):
    """200 checkpoint folders in which one of config.json, the index, tokenizer.json and
    tokenizer_config.json has a field of the wrong type, each planned for conversion (headers,
    architecture, tensor plan and shapes, tokenizer metadata: everything short of writing)."""
    from edgeds.convert import prepare
    from tests.numpy_checkpoints import build_qwen2

    folder = build_qwen2(tmp_path / "ckpt", hidden=8, ff=16, layers=1, heads=2, kv_heads=1, vocab=264)
    header, _ = _header_parts((folder / "model.safetensors").read_bytes())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 1}, "weight_map": {n: "model.safetensors" for n in header if n != "__metadata__"}}))
    files = {p.name: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert len(files) == 4 and prepare(folder, "f16")
    rng = random.Random(SEED)
    start = time.monotonic()
    for case in range(200):
        damaged = sorted(files)[case % 4]
        for name, value in files.items():
            (folder / name).write_text(json.dumps(mutate_json(value, rng) if name == damaged else value))
        check(lambda: prepare(folder, "f16"), f"checkpoint seed {SEED} case {case} ({damaged})")
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------------------------------------
# batch rows

ROWS = [
    {"id": 1, "prompt": "hi", "max_tokens": 8, "temperature": 0.6, "top_p": 0.9, "seed": 3, "system": "be brief"},
    {"id": "b", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text",
                                                                                             "text": "x"}]}]},
    {"prompt": "no id"},
]


def test_batch_rows():
    """3000 rows: 1500 with JSON fields of the wrong type, 1500 mangled as bytes."""
    rng = random.Random(SEED)
    start = time.monotonic()
    for case in range(3000):
        base = rng.choice(ROWS)
        if case % 2:
            text = json.dumps(mutate_json(base, rng))
        else:
            text = mutate(json.dumps(base).encode(), rng).decode("utf-8", errors="replace")
        row = check(lambda: parse_row(text, index=0, line=case + 1, defaults=GenerationParams()),
                    f"batch seed {SEED} case {case}")
        assert row is not None, f"batch seed {SEED} case {case}: parse_row raised"
        assert (row.error is None) != (row.messages is None)
        assert row.error is None or "\n" not in row.error
    assert time.monotonic() - start < 30


def test_batch_files(tmp_path):
    """200 whole input files mangled as bytes (BOM, invalid UTF-8, torn lines)."""
    rng = random.Random(SEED)
    base = b"\xef\xbb\xbf" + b"\n".join(json.dumps(r).encode() for r in ROWS * 3) + b"\n"
    path = tmp_path / "in.jsonl"
    for case in range(200):
        path.write_bytes(mutate(base, rng))
        rows = check(lambda: read_rows(path, GenerationParams()), f"batch file seed {SEED} case {case}")
        assert rows is not None and all(r.error is None or "\n" not in r.error for r in rows)
