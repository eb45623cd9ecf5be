"""A streaming GGUF (version 3) writer: metadata and tensor table first, then tensor data piece by piece.

Every tensor is declared (name, shape, type) before anything is written, so the whole header
(and the file's final size) is known up front; then each tensor's data is appended from an
iterator of float32 pieces, converted to the tensor's type piece by piece. Nothing larger than
one piece is ever held. A state machine rejects out-of-order calls, and each tensor must
receive exactly its declared byte count.

Tensors are written in the order declared, and any extra key can be added with `add`. Value
types are gguf-py's GGUFValueType, packed with the reader's formats (edgeds.catalog.gguf).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum
from pathlib import Path
from typing import BinaryIO

import numpy as np
from gguf import GGUFValueType

from edgeds.catalog.gguf import DEFAULT_ALIGNMENT, MAGIC, SCALAR_FORMAT
from edgeds.errors import ConversionError

VERSION = 3


class TensorType(IntEnum):
    """The ggml tensor types this writer produces (ggml.h values)."""

    F32 = 0
    F16 = 1
    Q8_0 = 8
    BF16 = 30


# outtype name → (tensor type, llama_ftype for general.file_type)
OUTTYPES: dict[str, tuple[TensorType, int]] = {
    "f32": (TensorType.F32, 0),
    "f16": (TensorType.F16, 1),
    "bf16": (TensorType.BF16, 32),
    "q8_0": (TensorType.Q8_0, 7),
}
Q8_0_BLOCK, Q8_0_BYTES = 32, 34


def tensor_nbytes(shape: tuple[int, ...], ttype: TensorType) -> int:
    n = int(np.prod(shape, dtype=np.int64))
    if ttype == TensorType.Q8_0:
        return n // Q8_0_BLOCK * Q8_0_BYTES
    return n * (4 if ttype == TensorType.F32 else 2)


_U64 = struct.Struct("<Q")


def _pad(n: int) -> int:
    return -n % DEFAULT_ALIGNMENT


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _infer(value: object) -> GGUFValueType:
    if isinstance(value, bool):
        return GGUFValueType.BOOL
    if isinstance(value, int):
        return GGUFValueType.UINT32 if 0 <= value < 1 << 32 else GGUFValueType.INT64
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    if isinstance(value, str):
        return GGUFValueType.STRING
    if isinstance(value, (list, tuple)):
        return GGUFValueType.ARRAY
    raise TypeError(f"no GGUF type for {type(value).__name__}")


def _array_item_type(values: list | tuple) -> GGUFValueType:
    if not values:
        return GGUFValueType.INT32
    first = values[0]
    if isinstance(first, bool):
        return GGUFValueType.BOOL
    if isinstance(first, int):
        return GGUFValueType.INT32  # llama.cpp reads token types and similar arrays as int32
    return _infer(first)


def encode_value(value: object, vtype: GGUFValueType, item_type: GGUFValueType | None = None) -> bytes:
    """The bytes of one metadata value (type tag included)."""
    out = struct.pack("<I", vtype)
    if vtype == GGUFValueType.STRING:
        return out + _string(str(value))
    if vtype == GGUFValueType.ARRAY:
        items = list(value)  # type: ignore[call-overload]
        item_type = item_type if item_type is not None else _array_item_type(items)
        out += struct.pack("<IQ", item_type, len(items))
        if item_type == GGUFValueType.STRING:
            pack = _U64.pack
            return out + b"".join([pack(len(raw)) + raw for raw in (str(s).encode("utf-8") for s in items)])
        return out + struct.pack(f"<{len(items)}{SCALAR_FORMAT[item_type][1]}", *items)
    return out + struct.pack(SCALAR_FORMAT[vtype], value)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bits (uint16), rounding to nearest even; NaN stays NaN."""
    bits = x.astype(np.float32, copy=False).view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    if nan.any():
        rounded[nan] = (bits[nan] >> 16) | 0x40
    return rounded.astype(np.uint16)


def to_q8_0(x: np.ndarray) -> np.ndarray:
    """float32 rows (size a multiple of 32) → Q8_0 blocks: an f16 scale and 32 int8 values each."""
    blocks = x.astype(np.float32, copy=False).reshape(-1, Q8_0_BLOCK)
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127.0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d == 0, 0, blocks / d)
    out = np.empty((blocks.shape[0], Q8_0_BYTES), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:] = np.round(q).astype(np.int8).view(np.uint8)
    return out


@dataclass(frozen=True)
class BF16Bits:
    """A piece still in bfloat16 (uint16 bits) as a BF16 checkpoint stores it."""

    bits: np.ndarray

    def float32(self) -> np.ndarray:
        out = self.bits.astype(np.uint32)
        np.left_shift(out, 16, out=out)
        return out.view(np.float32)


def bf16_to_f16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits → float16, as float32 → float16 casting would give, without float32.

    Where the value is a normal float16 (bf16 exponent 113..142) the 7 mantissa bits fit the 10
    of float16 exactly: rebias the exponent and shift. Smaller values (float16 subnormals, which
    need rounding) go through float32; larger ones overflow to ±inf, NaN stays NaN.
    """
    bits = bits.astype(np.uint16, copy=False)
    magnitude = bits & np.uint16(0x7FFF)
    out = magnitude - np.uint16(0x3800)
    np.left_shift(out, 3, out=out)
    out |= bits & np.uint16(0x8000)
    small = magnitude < 0x3880
    if small.any():
        out[small] = BF16Bits(bits[small]).float32().astype(np.float16).view(np.uint16)
    big = magnitude >= 0x4780
    if big.any():
        out[big] = (bits[big] & 0x8000) | np.where(magnitude[big] > 0x7F80, 0x7E00, 0x7C00).astype(np.uint16)
    return out.view(np.float16)


def encode_piece(piece: np.ndarray | BF16Bits, ttype: TensorType) -> np.ndarray:
    """One float32 (or BF16Bits) piece in the tensor's on-disk type (any array whose bytes are the data)."""
    if isinstance(piece, BF16Bits):
        if ttype == TensorType.BF16:
            return piece.bits
        if ttype == TensorType.F16:
            return bf16_to_f16(piece.bits)
        piece = piece.float32()
    if ttype == TensorType.F32:
        return piece.astype("<f4", copy=False)
    if ttype == TensorType.F16:
        return piece.astype("<f2")
    if ttype == TensorType.BF16:
        return to_bf16(piece)
    return to_q8_0(piece)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order; GGUF stores it reversed (ne0 = last numpy dim)
    ttype: TensorType
    offset: int  # from the start of the data section
    nbytes: int


class State(Enum):
    DECLARING = "declaring metadata and tensors"
    WRITING = "writing tensor data"
    DONE = "finished"


class GGUFWriter:
    """Declare metadata and tensors, `open` the file (writes the header), then `write` each tensor in order."""

    def __init__(self) -> None:
        self._kv: dict[str, bytes] = {}
        self._tensors: list[TensorInfo] = []
        self._names: set[str] = set()
        self._data_size = 0
        self._state = State.DECLARING
        self._file: BinaryIO | None = None
        self._next = 0

    def _expect(self, state: State) -> None:
        if self._state != state:
            raise RuntimeError(f"GGUF writer: expected to be {state.value}, but it is {self._state.value}")

    def add(self, key: str, value: object, vtype: GGUFValueType | None = None, item_type: GGUFValueType | None = None) -> None:
        """A metadata key; the type is inferred unless given (int → uint32, float → float32, int list → int32)."""
        self._expect(State.DECLARING)
        self._kv[key] = _string(key) + encode_value(value, vtype if vtype is not None else _infer(value), item_type)

    def add_tensor(self, name: str, shape: tuple[int, ...], ttype: TensorType) -> None:
        self._expect(State.DECLARING)
        if name in self._names:
            raise ValueError(f"duplicate tensor {name!r}")
        self._names.add(name)
        nbytes = tensor_nbytes(shape, ttype)
        self._tensors.append(TensorInfo(name, tuple(shape), ttype, self._data_size, nbytes))
        self._data_size += nbytes + _pad(nbytes)

    def _header(self) -> bytes:
        parts = [MAGIC, struct.pack("<IQQ", VERSION, len(self._tensors), len(self._kv)), *self._kv.values()]
        for t in self._tensors:
            dims = tuple(reversed(t.shape))
            parts.append(_string(t.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, t.ttype, t.offset))
        header = b"".join(parts)
        return header + b"\0" * _pad(len(header))

    @property
    def total_size(self) -> int:
        """The finished file's size in bytes."""
        return len(self._header()) + self._data_size

    @property
    def tensors(self) -> list[TensorInfo]:
        return list(self._tensors)

    def open(self, path: Path) -> None:
        """Create `path` and write the header, metadata and tensor table."""
        self._expect(State.DECLARING)
        self._file = open(path, "wb")
        self._file.write(self._header())
        self._state = State.WRITING

    def write(self, name: str, pieces: Iterable[np.ndarray]) -> int:
        """Append the next declared tensor from float32 pieces; returns the bytes written."""
        self._expect(State.WRITING)
        assert self._file is not None
        info = self._tensors[self._next]
        if info.name != name:
            raise RuntimeError(f"GGUF writer: expected tensor {info.name!r} next, got {name!r}")
        written = 0
        for piece in pieces:
            data = encode_piece(piece if isinstance(piece, BF16Bits) else np.asarray(piece), info.ttype)
            written += data.nbytes
            if written > info.nbytes:
                break
            self._file.write(memoryview(np.ascontiguousarray(data)).cast("B"))
        if written != info.nbytes:
            raise ConversionError(f"tensor {name!r}: produced {written} bytes, its shape {list(info.shape)} "
                                  f"as {info.ttype.name} needs {info.nbytes}")
        self._file.write(b"\0" * _pad(written))
        self._next += 1
        if self._next == len(self._tensors):
            self._state = State.DONE
        return written

    def close(self) -> None:
        """Close the file (again: a no-op, even after a close that failed)."""
        file, self._file = self._file, None
        if file is not None:
            file.close()
