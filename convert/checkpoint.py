"""Reading a Hugging Face safetensors checkpoint one tensor (or one row block) at a time.

Only the JSON headers are parsed up front; tensor bytes are read with positioned reads
(`os.pread`) into fresh arrays when asked for, so memory holds at most the piece being
converted, and no shard is mapped or loaded whole. Page-cache pages of a memory map would
count toward the process's resident size; plain reads do not.

Checked before any data is read: config.json exists and parses into an object; every shard the
index names is a file inside the checkpoint (never `..`, an absolute path or a link out of it)
and exists; the index and the shards agree tensor by tensor; each header parses, every field has
its JSON type (dtype a known string, shape non-negative integers, two integer offsets), and its
offsets fit the file (a truncated download fails here) and match dtype × shape.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeds.convert.arch._config import checked_config
from edgeds.errors import ConversionError

INDEX = "model.safetensors.index.json"
MAX_HEADER = 100 << 20
SCALE_SUFFIX = "_scale_inv"  # FP8 block scales: "x.weight" → "x.weight_scale_inv"

# safetensors dtype → (bytes per element, numpy dtype of the stored bits)
DTYPES: dict[str, tuple[int, str]] = {
    "F32": (4, "<f4"),
    "F16": (2, "<f2"),
    "BF16": (2, "<u2"),
    "F64": (8, "<f8"),
    "F8_E4M3": (1, "u1"),
}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are: file, absolute byte offset, dtype, shape."""

    file: Path
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


def load_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; anything else (unreadable, not UTF-8, not JSON, nested past
    Python's recursion limit, not an object) is a ConversionError naming the file."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as err:
        raise ConversionError(f"{path}: cannot read ({err.strerror or err})") from None
    except ValueError as err:  # bad JSON or bad UTF-8
        raise ConversionError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise ConversionError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: {what} must be a JSON object, not {type(data).__name__}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(path: Path, name: str, info: Any, base: int, size: int) -> TensorEntry:
    """One header entry, every field checked for its JSON type and against the file's size."""
    def corrupt(why: str) -> ConversionError:
        return ConversionError(f"{path}: corrupt safetensors header entry for {name!r} ({why})")

    if not isinstance(info, dict):
        raise corrupt("not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise corrupt(f"dtype {dtype!r} is not a string")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise corrupt(f"shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise corrupt(f"data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
    if dtype not in DTYPES:
        raise ConversionError(f"{path}: tensor {name!r} has dtype {dtype!r}; supported: {', '.join(DTYPES)}")
    begin, end = offsets
    expected = DTYPES[dtype][0] * math.prod(shape)
    if end - begin != expected:
        raise ConversionError(f"{path}: corrupt safetensors header: {name!r} spans {end - begin} bytes, "
                              f"{dtype}{shape} needs {expected}")
    if base + end > size:
        raise ConversionError(f"{path}: truncated safetensors file: {name!r} ends at byte {base + end}, "
                              f"the file has {size}")
    return TensorEntry(path, base + begin, expected, dtype, tuple(shape))


def _parse_header(path: Path) -> dict[str, TensorEntry]:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path}: truncated safetensors file ({size} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER, size - 8):
                raise ConversionError(f"{path}: corrupt or truncated safetensors header (claims {length} bytes)")
            raw = f.read(length)
    except OSError as err:
        raise ConversionError(f"{path}: cannot read ({err.strerror})") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except ValueError as err:  # bad JSON or bad UTF-8
        raise ConversionError(f"{path}: corrupt safetensors header ({err})") from None
    except RecursionError:
        raise ConversionError(f"{path}: corrupt safetensors header (nested too deeply)") from None
    base = 8 + length
    return {name: _entry(path, name, info, base, size) for name, info in header.items() if name != "__metadata__"}


def is_inside(folder: Path, name: Any) -> bool:
    """Whether `name` is a relative file name that stays in the checkpoint folder.

    A link may lead out of the folder only when the folder is a hub snapshot, and then only into
    that repository's cache folder: snapshot files are links to `../../blobs/ETAG`.
    """
    if not isinstance(name, str) or not name or "\\" in name or not name.isprintable():
        return False
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        return False
    root = folder.resolve()
    if root.parent.name == "snapshots":
        root = root.parent.parent
    return (folder / relative).resolve().is_relative_to(root)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    out = bits.astype(np.uint32)
    np.left_shift(out, 16, out=out)
    return out.view(np.float32)


class Checkpoint:
    """A local HF checkpoint folder: config, tensor table, and float32 reads.

    Attributes:
        folder: the checkpoint folder.
        config: config.json as a dict.
        names: every tensor name in file order, FP8 `*_scale_inv` companions excluded.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        cfg_path = self.folder / "config.json"
        if not cfg_path.is_file():
            raise ConversionError(f"{cfg_path}: missing; a Hugging Face checkpoint folder needs its config.json")
        self.config: dict[str, Any] = checked_config(load_json(cfg_path, "the config"), cfg_path)
        self.files: list[Path] = [cfg_path]  # every file the conversion reads besides the tokenizer's
        self._entries = self._load_entries()
        self._scales = {n for n in self._entries if n.endswith(SCALE_SUFFIX)}
        self.names = [n for n in self._entries if n not in self._scales]
        block = self.config.get("quantization_config", {}).get("weight_block_size", (128, 128))
        if len(block) != 2:
            raise ConversionError(f"{cfg_path}: quantization_config.weight_block_size is {block!r}; "
                                  "it must be [rows, columns]")
        self._fp8_block = (int(block[0]), int(block[1]))

    def _load_entries(self) -> dict[str, TensorEntry]:
        index_path = self.folder / INDEX
        if index_path.is_file():
            weight_map = load_json(index_path, "a safetensors index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConversionError(f"{index_path}: not a safetensors index (no weight_map object)")
            for name, file in weight_map.items():
                if not is_inside(self.folder, file):
                    raise ConversionError(f"{index_path}: weight_map puts {name!r} in {file!r}, which is not "
                                          "a file name inside the checkpoint folder")
            self.files.append(index_path)
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.folder / f).is_file()]
            if missing:
                raise ConversionError(f"{self.folder / missing[0]}: missing shard (listed in {INDEX}"
                                      + (f", with {len(missing) - 1} more missing)" if len(missing) > 1 else ")"))
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
            weight_map = None
            if not files:
                raise ConversionError(f"{self.folder}: no *.safetensors files (and no {INDEX})")
            outside = [f for f in files if not is_inside(self.folder, f)]
            if outside:
                raise ConversionError(f"{self.folder / outside[0]}: a link out of the checkpoint folder")
        entries: dict[str, TensorEntry] = {}
        for file in files:
            self.files.append(self.folder / file)
            for name, entry in _parse_header(self.folder / file).items():
                if name in entries:
                    raise ConversionError(f"{self.folder / file}: tensor {name!r} also in {entries[name].file.name}")
                if weight_map is not None and weight_map.get(name) != file:
                    raise ConversionError(f"{self.folder / file}: holds {name!r}, which {INDEX} "
                                          + (f"puts in {weight_map[name]}" if name in weight_map else "does not list"))
                entries[name] = entry
        if weight_map is not None:
            absent = [n for n in weight_map if n not in entries]
            if absent:
                raise ConversionError(f"{self.folder / weight_map[absent[0]]}: lacks {absent[0]!r}, "
                                      f"which {INDEX} puts there" + (f" ({len(absent)} tensors missing)" if len(absent) > 1 else ""))
        return entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def dtype(self, name: str) -> str:
        return self._entries[name].dtype

    def nbytes(self, name: str) -> int:
        return self._entries[name].nbytes

    def _raw(self, entry: TensorEntry, start: int, count: int) -> np.ndarray:
        """`count` stored elements from element `start`, as the stored bits' numpy dtype."""
        width, np_dtype = DTYPES[entry.dtype]
        buf = bytearray(count * width)
        view = memoryview(buf)
        done, offset = 0, entry.offset + start * width
        try:
            with entry.file.open("rb", buffering=0) as f:
                fd = f.fileno()
                while done < len(buf):
                    got = os.preadv(fd, [view[done:]], offset + done)
                    if got <= 0:
                        raise ConversionError(f"{entry.file}: truncated safetensors file (short read)")
                    done += got
        except OSError as err:
            raise ConversionError(f"{entry.file}: cannot read ({err.strerror or err})") from None
        return np.frombuffer(buf, dtype=np_dtype)

    def _to_f32(self, entry: TensorEntry, raw: np.ndarray) -> np.ndarray:
        if entry.dtype == "BF16":
            return _bf16_to_f32(raw)
        return raw.astype(np.float32, copy=False) if raw.dtype != np.float32 else raw

    def read(self, name: str) -> np.ndarray:
        """The whole tensor as float32 (FP8 e4m3 weights dequantized with their block scales)."""
        entry = self._entries[name]
        count = entry.nbytes // DTYPES[entry.dtype][0]
        if entry.dtype == "F8_E4M3":
            from edgeds.convert.fp8 import dequantize

            scale_name = name + SCALE_SUFFIX
            if scale_name not in self._entries:
                raise ConversionError(f"{entry.file}: FP8 tensor {name!r} has no {scale_name!r}")
            scale = self.read(scale_name)
            weight = self._raw(entry, 0, count).reshape(entry.shape)
            return dequantize(weight, scale, block=self._fp8_block, name=name)
        return self._to_f32(entry, self._raw(entry, 0, count)).reshape(entry.shape)

    def iter_bf16_bits(self, name: str, max_values: int) -> Iterator[np.ndarray]:
        """A BF16 tensor's stored bits (uint16), flat, at most `max_values` per piece."""
        entry = self._entries[name]
        assert entry.dtype == "BF16"
        count = entry.nbytes // 2
        for start in range(0, count, max_values):
            yield self._raw(entry, start, min(max_values, count - start))

    def iter_rows(self, name: str, max_bytes: int) -> Iterator[np.ndarray]:
        """The tensor as float32 row blocks of at most `max_bytes` (at least one row each)."""
        entry = self._entries[name]
        if entry.dtype == "F8_E4M3" or len(entry.shape) < 2:
            yield self.read(name)
            return
        row = int(np.prod(entry.shape[1:], dtype=np.int64))
        step = max(1, max_bytes // (4 * row))
        for start in range(0, entry.shape[0], step):
            rows = min(step, entry.shape[0] - start)
            raw = self._raw(entry, start * row, rows * row)
            yield self._to_f32(entry, raw).reshape((rows, *entry.shape[1:]))
