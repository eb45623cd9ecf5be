"""Reading a GGUF file's header: metadata values and the tensor table (not the tensor data).

Fast enough for vocabularies of 150k strings (gguf-py's GGUFReader builds one memmap view per
array element). Used by tests and by anything that plans from a GGUF's table of contents.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edgeds.convert.gguf_writer import ALIGNMENT, MAGIC, ValueType
from edgeds.errors import ConversionError

_SCALAR = {
    ValueType.UINT8: "<B", ValueType.INT8: "<b", ValueType.UINT16: "<H", ValueType.INT16: "<h",
    ValueType.UINT32: "<I", ValueType.INT32: "<i", ValueType.FLOAT32: "<f", ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q", ValueType.INT64: "<q", ValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # numpy order (GGUF's ne reversed)
    ggml_type: int
    offset: int  # absolute byte offset in the file


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, object]
    tensors: dict[str, TensorEntry]  # in file order


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise EOFError
    return struct.unpack(fmt, raw)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    raw = f.read(n)
    if len(raw) != n:
        raise EOFError
    return raw.decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: int) -> object:
    if vtype == ValueType.STRING:
        return _string(f)
    if vtype == ValueType.ARRAY:
        item, count = _read(f, "<I"), _read(f, "<Q")
        if item == ValueType.STRING:
            return [_string(f) for _ in range(count)]
        fmt = _SCALAR[ValueType(item)]
        raw = f.read(struct.calcsize(fmt) * count)
        return np.frombuffer(raw, dtype=np.dtype(fmt if fmt != "<?" else "?")).tolist()
    return _read(f, _SCALAR[ValueType(vtype)])


def read_header(path: Path) -> GGUFHeader:
    """Metadata and tensor table of a GGUF file; a bad or truncated header raises ConversionError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            if f.read(4) != MAGIC:
                raise ConversionError(f"{path}: not a GGUF file (bad magic)")
            _version, n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
            metadata = {}
            for _ in range(n_kv):
                key = _string(f)
                metadata[key] = _value(f, _read(f, "<I"))
            raw_tensors = []
            for _ in range(n_tensors):
                name = _string(f)
                dims = [_read(f, "<Q") for _ in range(_read(f, "<I"))]
                raw_tensors.append((name, tuple(reversed(dims)), _read(f, "<I"), _read(f, "<Q")))
            alignment = int(metadata.get("general.alignment", ALIGNMENT))  # type: ignore[arg-type]
            start = f.tell() + (-f.tell() % alignment)
    except (EOFError, struct.error, ValueError) as err:
        raise ConversionError(f"{path}: truncated or corrupt GGUF header ({err or 'unexpected end'})") from None
    tensors = {n: TensorEntry(n, s, t, start + o) for n, s, t, o in raw_tensors}
    return GGUFHeader(metadata, tensors)


def read_f32(path: Path, entry: TensorEntry) -> np.ndarray:
    """The data of an F32 tensor."""
    if entry.ggml_type != 0:
        raise ValueError(f"{entry.name} is not F32")
    count = int(np.prod(entry.shape, dtype=np.int64))
    return np.fromfile(path, dtype="<f4", count=count, offset=entry.offset).reshape(entry.shape)
