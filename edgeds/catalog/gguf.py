"""The one GGUF header reader: what a GGUF file says about itself (no llama.cpp).

Used by `edgeds show`, the fit estimate and placement, the converter's layout rewrite and
quantizer, and the tests: metadata with each key's value type, the tensor table (shape, ggml type,
data offset and size) and, on demand, a tensor's bytes as a read-only memory map. Split GGUFs
are read part by part (`*-00001-of-0000N.gguf`).

Nothing in a header is trusted: before a count is used to allocate or a file reaches llama.cpp,
`read_file` checks the structure the way llama.cpp's gguf loader does (alignment a power of two,
tensor dimensions, types, offsets and sizes inside the file, no repeated key or tensor name, no
nested arrays), and `read_gguf` checks the model's hyperparameters against the tensor table and
the limits llama.cpp asserts (`LIMITS`): a file llama.cpp would abort on is refused with one
line naming the file and the key.

The file is parsed here with gguf-py's type tables (value types, ggml block sizes) rather than
with `GGUFReader`, which builds a numpy view per vocabulary string and needs about 25 s for a
152k-token vocabulary on a small machine. Unless asked for `arrays`, this reader summarises
string arrays and long number arrays ("[151936 strings]") and takes well under a second.
Tests check that both agree.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeds.errors import EdgedsError

if TYPE_CHECKING:
    import numpy as np
    from gguf import GGUFValueType

_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
EXPERT_TENSOR = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_exps\.")  # a routed expert's weights

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # of the tensor data, unless general.alignment says otherwise
# GGUFValueType → struct format of the scalar types; 8 is a string, 9 an array
SCALAR_FORMAT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
                 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
SHORT_ARRAY = 1024  # number arrays up to this long (per-layer values) are read even without `arrays`
MAX_DIMS = 4        # GGML_MAX_DIMS
MAX_ELEMENTS = (1 << 63) - 1  # llama.cpp counts a tensor's elements in int64
KEY_ALIGNMENT = "general.alignment"
_LAYER = re.compile(r"^blk\.(\d+)\.")
_ARCH = re.compile(r"[\w-]+")  # llama.cpp's names: llama, qwen2, deepseek2, t5encoder, ...

# `{arch}.KEY` → (lowest, highest): hyperparameters llama.cpp asserts on while loading (an abort,
# not an error): LLAMA_MAX_LAYERS and LLAMA_MAX_EXPERTS of the llama.cpp edgeds is built with
# (block_count 0 and 513, expert_count 1025 abort it; 512 and 1024 load).
LIMITS: dict[str, tuple[int, int]] = {
    "block_count": (1, 512),
    "expert_count": (0, 1024),
    "expert_used_count": (0, 1024),
}

# The expert-offload layout record edgeds writes into MoE files (see edgeds.convert.layout).
KEY_LAYOUT_VERSION = "edgeds.layout.version"
KEY_HOT_BYTES = "edgeds.layout.hot_bytes"
KEY_EXPERT_BYTES = "edgeds.layout.expert_bytes"
KEY_RECIPE = "edgeds.quant.recipe"


def expert_layer(name: str) -> int | None:
    """The layer of a routed-expert tensor (`blk.N.ffn_{gate,up,down}_exps.*`), else None."""
    m = EXPERT_TENSOR.match(name)
    return int(m.group(1)) if m else None


def split_paths(path: Path, n: int) -> list[Path]:
    """llama.cpp's names for `path` split in n files (NAME.gguf → NAME-00001-of-0000n.gguf, ...)."""
    stem = path.name[:-5] if path.name.endswith(".gguf") else path.name
    return [path.with_name(f"{stem}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


def split_parts(path: Path) -> tuple[Path, ...]:
    """All parts of a split GGUF given any of them (the file itself if not split)."""
    m = _SPLIT.match(path.name)
    if not m:
        return (path,)
    parts = tuple(split_paths(path.with_name(m["stem"] + ".gguf"), int(m["n"])))
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise EdgedsError(f"{path}: split GGUF is missing part(s) {', '.join(missing)}")
    return parts


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a GGUF's tensor table."""

    name: str
    ggml_type: str   # GGMLQuantizationType name: F16, Q4_K, ...
    n_elements: int
    n_bytes: int
    shape: tuple[int, ...] = ()  # numpy order: the file's dimensions reversed
    offset: int = 0              # where the data starts in the file (part) that holds it


@dataclass(frozen=True)
class Layout:
    """The expert-offload layout record (`edgeds.layout.*`) of a MoE file edgeds wrote."""

    hot_bytes: int                 # every non-expert tensor, stored first
    expert_bytes: tuple[int, ...]  # routed-expert tensors per layer, 0 for dense layers
    recipe: str | None             # the quantization recipe, when one was recorded


@dataclass(frozen=True)
class GgufFile:
    """One GGUF file: metadata, each key's value type, the tensor table; tensor data on demand."""

    path: Path
    metadata: dict[str, Any] = field(repr=False)
    value_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = field(repr=False)  # (type, array item type)
    tensors: tuple[TensorInfo, ...] = field(repr=False)          # in file order

    @cached_property
    def _by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def tensor(self, name: str) -> TensorInfo:
        return self._by_name[name]

    @cached_property
    def _map(self) -> np.memmap:
        import numpy as np

        return np.memmap(self.path, dtype=np.uint8, mode="r")

    def data(self, name: str) -> np.ndarray:
        """A tensor's bytes as a read-only uint8 view of the memory-mapped file."""
        t = self.tensor(name)
        return self._map[t.offset:t.offset + t.n_bytes]

    def f32(self, name: str) -> np.ndarray:
        """An F32 tensor's values in its shape (a read-only view of the file)."""
        t = self.tensor(name)
        if t.ggml_type != "F32":
            raise ValueError(f"{name} is {t.ggml_type}, not F32")
        return self.data(name).view("<f4").reshape(t.shape)


@dataclass(frozen=True)
class GgufInfo:
    """A model's GGUF, all parts of a split one together: what `edgeds show` and planning need."""

    path: Path
    parts: tuple[Path, ...]
    arch: str
    n_params: int
    file_bytes: int
    tensor_bytes: int
    quant_mix: dict[str, tuple[int, int]]       # ggml type -> (tensors, bytes)
    metadata: dict[str, Any] = field(repr=False)  # scalar and string keys (long arrays summarized)
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)  # every part's, in file order
    expert_bytes: int = 0                        # bytes of routed-expert tensors (ffn_*_exps)

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value; `{arch}` in `key` is replaced by the architecture."""
        return self.metadata.get(key.format(arch=self.arch), default)

    @property
    def context_length(self) -> int | None:
        return self.get("{arch}.context_length")

    @property
    def chat_template(self) -> str | None:
        return self.get("tokenizer.chat_template")

    @property
    def edgeds_keys(self) -> dict[str, Any]:
        return {k: v for k, v in self.metadata.items() if k.startswith("edgeds.")}

    @property
    def layout(self) -> Layout | None:
        """The expert-offload layout record, or None when the file has none."""
        if KEY_LAYOUT_VERSION not in self.metadata:
            return None
        return Layout(int(self.metadata[KEY_HOT_BYTES]), tuple(int(b) for b in self.metadata[KEY_EXPERT_BYTES]),
                      self.metadata.get(KEY_RECIPE))


class _Cursor:
    """Little-endian reads over a memory map of the file; reading past its end is a truncated header."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def skip(self, size: int) -> int:
        """Move on `size` bytes; returns where they start."""
        start = self.pos
        if size > len(self.buf) - start:
            raise EdgedsError(f"{self.path}: truncated GGUF header")
        self.pos += size
        return start

    def take(self, fmt: str):
        return struct.unpack_from(fmt, self.buf, self.skip(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.strings(1, keep=True)[0]

    def numbers(self, fmt: str, count: int) -> list:
        return list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.skip(struct.calcsize(fmt) * count)))

    def strings(self, count: int, keep: bool) -> list[str]:
        """`count` strings; with `keep` False they are skipped over and the list is empty."""
        buf, pos, end, out = self.buf, self.pos, len(self.buf), []
        for _ in range(count):
            n = struct.unpack_from("<Q", buf, pos)[0]  # struct.error past the end: truncated
            pos += 8
            if n > end - pos:
                raise EdgedsError(f"{self.path}: truncated GGUF header")
            if keep:
                out.append(str(buf[pos:pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        return out


def _read_value(cur: _Cursor, vtype: int, arrays: bool) -> Any:
    if vtype in SCALAR_FORMAT:
        return cur.take(SCALAR_FORMAT[vtype])
    if vtype == _STRING:
        return cur.string()
    if vtype != _ARRAY:
        raise EdgedsError(f"{cur.path}: unknown GGUF value type {vtype}")
    item, count = cur.take("<I"), cur.take("<Q")
    if count > len(cur.buf) - cur.pos:  # every element takes at least a byte
        raise EdgedsError(f"{cur.path}: truncated GGUF header")
    if item in SCALAR_FORMAT:
        if arrays or count <= SHORT_ARRAY:
            return cur.numbers(SCALAR_FORMAT[item], count)
        cur.skip(struct.calcsize(SCALAR_FORMAT[item]) * count)
        return f"[{count} values]"
    if item == _STRING:
        values = cur.strings(count, keep=arrays)
        return values if arrays else f"[{count} strings]"
    raise EdgedsError(f"{cur.path}: corrupt GGUF header (an array of GGUF value type {item})")


def _alignment(path: Path, metadata: dict[str, Any], value_types: dict) -> int:
    """general.alignment: llama.cpp reads it as a uint32 (asserting the type) and wants a power of two."""
    if KEY_ALIGNMENT not in metadata:
        return DEFAULT_ALIGNMENT
    align = metadata[KEY_ALIGNMENT]
    if value_types[KEY_ALIGNMENT][0].name != "UINT32" or align <= 0 or align & (align - 1):
        raise EdgedsError(f"{path}: corrupt GGUF header ({KEY_ALIGNMENT} = {align!r} "
                          f"as {value_types[KEY_ALIGNMENT][0].name}; it must be a uint32 power of two)")
    return align


def _tensor(path: Path, name: str, dims: list[int], kind, offset: int, align: int, sizes) -> TensorInfo:
    """One tensor table entry, checked as llama.cpp's loader checks it (offset relative to the data)."""
    n = math.prod(dims)
    if kind not in sizes or n > MAX_ELEMENTS or any(d > MAX_ELEMENTS for d in dims):
        raise EdgedsError(f"{path}: corrupt GGUF header (tensor {name!r}: {kind.name}{dims})")
    block, type_size = sizes[kind]
    if dims and dims[0] % block:
        raise EdgedsError(f"{path}: corrupt GGUF header (tensor {name!r}: rows of {dims[0]} do not fill "
                          f"{kind.name} blocks of {block})")
    if offset % align:
        raise EdgedsError(f"{path}: corrupt GGUF header (tensor {name!r} at offset {offset}, "
                          f"not a multiple of the alignment {align})")
    return TensorInfo(name, kind.name, n, n // block * type_size, tuple(reversed(dims)), offset)


def check_model(path: Path, metadata: dict[str, Any], tensors: tuple[TensorInfo, ...]) -> None:
    """The hyperparameters edgeds and llama.cpp size things by, against `LIMITS` and the tensor
    table: block_count must name exactly the layers whose `blk.N.*` tensors the file holds.

    Raises:
        EdgedsError: naming the file and the key.
    """
    arch = metadata.get("general.architecture")
    if arch is None:
        return
    if not isinstance(arch, str) or not _ARCH.fullmatch(arch):
        raise EdgedsError(f"{path}: general.architecture {arch!r} is not an architecture name")
    for key, (low, high) in LIMITS.items():
        value = metadata.get(f"{arch}.{key}")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high):
            raise EdgedsError(f"{path}: {arch}.{key} = {value!r} is out of range ({low} to {high} for llama.cpp)")
    experts, used = (metadata.get(f"{arch}.{k}", 0) for k in ("expert_count", "expert_used_count"))
    if used > experts or (experts > 0) != (used > 0):
        raise EdgedsError(f"{path}: {arch}.expert_used_count = {used} does not fit {arch}.expert_count = {experts}")
    n_layer = metadata.get(f"{arch}.block_count")
    layers = {int(m.group(1)) for t in tensors if (m := _LAYER.match(t.name))}
    if n_layer is None or not layers:  # a vocabulary-only file has no layers to compare
        return
    if layers != set(range(n_layer)):
        top = max(layers)
        held = f"layers 0-{top}" if len(layers) == top + 1 else f"{len(layers)} layers up to blk.{top}"
        raise EdgedsError(f"{path}: {arch}.block_count = {n_layer}, but the tensor table holds {held}")


def read_file(path: str | Path, *, arrays: bool = False) -> GgufFile:
    """The header of one GGUF file (one part of a split one). `arrays`: read every array in full
    (the vocabulary too); otherwise string arrays and number arrays longer than SHORT_ARRAY are
    summarised ("[151936 strings]").

    Raises:
        EdgedsError: not a readable GGUF (truncated, corrupt, wrong magic, a count or offset that
            does not fit the file); one line naming the file.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, path)
            if buf[:4] != MAGIC:
                raise EdgedsError(f"{path}: not a GGUF file (bad magic)")
            cur.skip(4)
            version = cur.take("<I")
            if version not in (2, 3):
                raise EdgedsError(f"{path}: unsupported GGUF version {version}")
            n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
            metadata, value_types = {}, {}
            for _ in range(n_kv):
                key = cur.string()
                if key in metadata:
                    raise EdgedsError(f"{path}: corrupt GGUF header (key {key!r} appears twice)")
                vtype = cur.take("<I")
                item = struct.unpack_from("<I", buf, cur.pos)[0] if vtype == _ARRAY else None
                metadata[key] = _read_value(cur, vtype, arrays)
                value_types[key] = (GGUFValueType(vtype), None if item is None else GGUFValueType(item))
            align = _alignment(path, metadata, value_types)
            table, names = [], set()
            for _ in range(n_tensors):
                name = cur.string()
                n_dims = cur.take("<I")
                if n_dims > MAX_DIMS:
                    raise EdgedsError(f"{path}: corrupt GGUF header (tensor {name!r} has {n_dims} dimensions)")
                dims = [cur.take("<Q") for _ in range(n_dims)]
                kind = GGMLQuantizationType(cur.take("<I"))
                offset = cur.take("<Q")
                table.append(_tensor(path, name, dims, kind, offset, align, GGML_QUANT_SIZES))
                if name in names:
                    raise EdgedsError(f"{path}: corrupt GGUF header (tensor {name!r} appears twice)")
                names.add(name)
            data_start = (cur.pos + align - 1) // align * align
            data_end = max((t.offset + t.n_bytes for t in table), default=0)
            if table and data_start + data_end > len(buf):  # (a file without tensors may end unpadded)
                raise EdgedsError(f"{path}: truncated GGUF file ({len(buf)} bytes, its tensors need "
                                  f"{data_start + data_end})")
    except struct.error:  # an array ran past the end of the file
        raise EdgedsError(f"{path}: truncated GGUF header") from None
    except (OSError, ValueError) as err:
        raise EdgedsError(f"{path}: not a readable GGUF file ({err})") from None
    tensors = tuple(replace(t, offset=data_start + t.offset) for t in table)
    return GgufFile(path, metadata, value_types, tensors)


def read_gguf(path: str | Path) -> GgufInfo:
    """Read a GGUF's metadata and tensor table (all parts of a split file), checked with
    `check_model`: what edgeds plans with and hands llama.cpp is what the file holds.

    Raises:
        EdgedsError: not a readable GGUF (truncated, wrong magic, missing split part), or
            hyperparameters that llama.cpp would abort on or that disagree with the tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgedsError(f"{path}: no such file")
    parts = split_parts(path)
    metadata: dict[str, Any] = {}
    mix: Counter = Counter()
    mix_bytes: Counter = Counter()
    n_params = tensor_bytes = expert_bytes = 0
    table: list[TensorInfo] = []
    for part in parts:
        header = read_file(part)
        for key, value in header.metadata.items():
            metadata.setdefault(key, value)
        for t in header.tensors:
            table.append(t)
            mix[t.ggml_type] += 1
            mix_bytes[t.ggml_type] += t.n_bytes
            n_params += t.n_elements
            tensor_bytes += t.n_bytes
            if expert_layer(t.name) is not None:
                expert_bytes += t.n_bytes
    check_model(path, metadata, tuple(table))
    return GgufInfo(
        path=path,
        parts=parts,
        arch=str(metadata.get("general.architecture", "")),
        n_params=n_params,
        file_bytes=sum(p.stat().st_size for p in parts),
        tensor_bytes=tensor_bytes,
        quant_mix={k: (mix[k], mix_bytes[k]) for k in sorted(mix, key=lambda k: -mix_bytes[k])},
        metadata=metadata,
        tensors=tuple(table),
        expert_bytes=expert_bytes,
    )
