"""What a GGUF file says about itself, read with gguf-py's GGUFReader (no llama.cpp).

Used by `edgeds show` and by the fit estimate: architecture, parameter count, the quant mix
(tensor count and bytes per ggml type), context length, chat template, the geometry keys the
KV-cache estimate needs, and the `edgeds.*` expert-layout keys of files edgeds converted.
Split GGUFs are read part by part (`*-00001-of-0000N.gguf`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeds.errors import EdgedsError

_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")


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
    expert_bytes: int = 0                        # bytes of routed-expert tensors (ffn_*_exps)
    output_bytes: int = 0                        # token embedding + output head

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


def _value(field) -> Any:
    from gguf import GGUFValueType

    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        if len(types) > 1 and types[1] == GGUFValueType.STRING:
            return f"[{len(field.data)} strings]"
        if len(field.data) <= 16:
            return [field.parts[i].tolist()[0] for i in field.data]
        return f"[{len(field.data)} values]"
    if types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    return field.parts[field.data[0]].tolist()[0]


def read_gguf(path: str | Path) -> GgufInfo:
    """Read a GGUF's metadata and tensor table (all parts of a split file).

    Raises:
        EdgedsError: not a readable GGUF (truncated, wrong magic, missing split part).
    """
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise EdgedsError(f"{path}: no such file")
    parts = split_parts(path)
    metadata: dict[str, Any] = {}
    mix: Counter = Counter()
    mix_bytes: Counter = Counter()
    n_params = tensor_bytes = expert_bytes = output_bytes = 0
    for part in parts:
        try:
            reader = GGUFReader(part)
        except (ValueError, OSError, IndexError) as err:
            raise EdgedsError(f"{part}: not a readable GGUF file ({err})") from None
        for name, fld in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            metadata.setdefault(name, _value(fld))
        for t in reader.tensors:
            kind = t.tensor_type.name
            mix[kind] += 1
            mix_bytes[kind] += int(t.n_bytes)
            n_params += int(t.n_elements)
            tensor_bytes += int(t.n_bytes)
            if "_exps." in t.name:
                expert_bytes += int(t.n_bytes)
            if t.name in ("token_embd.weight", "output.weight"):
                output_bytes += int(t.n_bytes)
    return GgufInfo(
        path=path,
        parts=parts,
        arch=str(metadata.get("general.architecture", "")),
        n_params=n_params,
        file_bytes=sum(p.stat().st_size for p in parts),
        tensor_bytes=tensor_bytes,
        quant_mix={k: (mix[k], mix_bytes[k]) for k in sorted(mix, key=lambda k: -mix_bytes[k])},
        metadata=metadata,
        expert_bytes=expert_bytes,
        output_bytes=output_bytes,
    )
