"""What a GGUF file says about itself, read with gguf-py's GGUFReader (no llama.cpp).

Used by `edgeds show` and by the fit estimate: architecture, parameter count, the quant mix
(tensor count and bytes per ggml type), context length, chat template, the geometry keys the
KV-cache estimate needs, and the `edgeds.*` expert-layout keys of files edgeds converted.
Split GGUFs are read part by part (`*-00001-of-0000N.gguf`).

The file is parsed here with gguf-py's type tables (value types, ggml block sizes) rather than
with `GGUFReader`, which builds a numpy view per vocabulary string and needs about 25 s for a
152k-token vocabulary on a small machine; this reader skips arrays and takes well under a
second. Tests check that both agree.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeds.errors import EdgedsError

_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
EXPERT_TENSOR = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_exps\.")  # a routed expert's weights


def expert_layer(name: str) -> int | None:
    """The layer of a routed-expert tensor (`blk.N.ffn_{gate,up,down}_exps.*`), else None."""
    m = EXPERT_TENSOR.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a GGUF's tensor table."""

    name: str
    ggml_type: str   # GGMLQuantizationType name: F16, Q4_K, ...
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GgufInfo:
    path: Path
    parts: tuple[Path, ...]
    arch: str
    n_params: int
    file_bytes: int
    tensor_bytes: int
    quant_mix: dict[str, tuple[int, int]]       # ggml type -> (tensors, bytes)
    metadata: dict[str, Any] = field(repr=False)  # scalar and string keys (arrays summarized)
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


def split_parts(path: Path) -> tuple[Path, ...]:
    """All parts of a split GGUF given any of them (the file itself if not split)."""
    m = _SPLIT.match(path.name)
    if not m:
        return (path,)
    n = int(m["n"])
    parts = tuple(path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1))
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise EdgedsError(f"{path}: split GGUF is missing part(s) {', '.join(missing)}")
    return parts


class _Cursor:
    """Little-endian reads over a memory map of the file."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise EdgedsError(f"{self.path}: truncated GGUF header")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise EdgedsError(f"{self.path}: truncated GGUF header")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # GGUFValueType -> struct format
_STRING, _ARRAY = 8, 9


def _read_value(cur: _Cursor, vtype: int) -> Any:
    if vtype in _SCALARS:
        return cur.take(_SCALARS[vtype])
    if vtype == _STRING:
        return cur.string()
    if vtype == _ARRAY:
        etype, count = cur.take("<I"), cur.take("<Q")
        if etype in _SCALARS:
            size = struct.calcsize(_SCALARS[etype])
            if count <= 16:
                return [cur.take(_SCALARS[etype]) for _ in range(count)]
            cur.pos += size * count
            return f"[{count} values]"
        if etype == _STRING:
            for _ in range(count):
                cur.pos += 8 + struct.unpack_from("<Q", cur.buf, cur.pos)[0]
            return f"[{count} strings]"
        for _ in range(count):
            _read_value(cur, etype)
        return f"[{count} arrays]"
    raise EdgedsError(f"{cur.path}: unknown GGUF value type {vtype}")


def read_part(path: Path) -> tuple[dict[str, Any], list[tuple[str, str, int, int]]]:
    """(metadata, [(tensor name, ggml type, elements, bytes)]) of one GGUF file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, path)
            if cur.take("<I") != 0x46554747:
                raise EdgedsError(f"{path}: not a GGUF file (bad magic)")
            version = cur.take("<I")
            if version not in (2, 3):
                raise EdgedsError(f"{path}: unsupported GGUF version {version}")
            n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
            metadata = {}
            for _ in range(n_kv):
                key = cur.string()
                metadata[key] = _read_value(cur, cur.take("<I"))
            tensors = []
            data_end = 0
            for _ in range(n_tensors):
                name = cur.string()
                dims = [cur.take("<Q") for _ in range(cur.take("<I"))]
                ttype = cur.take("<I")
                offset = cur.take("<Q")
                n = math.prod(dims)
                kind = GGMLQuantizationType(ttype)
                block, type_size = GGML_QUANT_SIZES[kind]
                tensors.append((name, kind.name, n, n // block * type_size))
                data_end = max(data_end, offset + tensors[-1][3])
            align = int(metadata.get("general.alignment", 32))
            data_start = (cur.pos + align - 1) // align * align
            if data_start + data_end > len(buf):
                raise EdgedsError(f"{path}: truncated GGUF file ({len(buf)} bytes, its tensors need "
                                  f"{data_start + data_end})")
            return metadata, tensors
    except struct.error:  # a skipped string array ran past the end of the file
        raise EdgedsError(f"{path}: truncated GGUF header") from None
    except (OSError, ValueError) as err:
        raise EdgedsError(f"{path}: not a readable GGUF file ({err})") from None


def read_gguf(path: str | Path) -> GgufInfo:
    """Read a GGUF's metadata and tensor table (all parts of a split file).

    Raises:
        EdgedsError: not a readable GGUF (truncated, wrong magic, missing split part).
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
        part_meta, tensors = read_part(part)
        for key, value in part_meta.items():
            metadata.setdefault(key, value)
        for name, kind, n_elements, n_bytes in tensors:
            table.append(TensorInfo(name, kind, n_elements, n_bytes))
            mix[kind] += 1
            mix_bytes[kind] += n_bytes
            n_params += n_elements
            tensor_bytes += n_bytes
            if expert_layer(name) is not None:
                expert_bytes += n_bytes
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
