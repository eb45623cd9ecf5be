"""The expert-offload layout for MoE GGUF files.

Non-expert ("hot") tensors come first, then each layer's routed-expert tensors
(`blk.N.ffn_{gate,up,down}_exps.weight`) layer by layer, so the part that stays on the GPU is one
contiguous range and each layer's experts another. `edgeds.layout.*` keys record the layout version,
the hot bytes and the expert bytes per layer, and `edgeds.quant.recipe` the recipe. With `split`, the
file is written in llama.cpp's multi-file form (`NAME-00001-of-00002.gguf`, `split.*` keys) with the
boundary between hot tensors and experts. Stock llama.cpp loads either form.

The rewrite streams tensor data from the memory-mapped source; outputs are written under temporary
names and renamed only when complete.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgeds.errors import EdgedsError

LAYOUT_VERSION = 1
EXPERT_TENSOR = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_exps\.")
KEY_VERSION = "edgeds.layout.version"
KEY_HOT_BYTES = "edgeds.layout.hot_bytes"
KEY_EXPERT_BYTES = "edgeds.layout.expert_bytes"
KEY_RECIPE = "edgeds.quant.recipe"
_PART = {"gate": 0, "up": 1, "down": 2}


@dataclass(frozen=True)
class Layout:
    """Where the bytes of a layout-ordered MoE file are."""

    hot_bytes: int
    expert_bytes: tuple[int, ...]  # per layer, 0 for dense layers
    files: tuple[Path, ...]


def expert_layer(name: str) -> int | None:
    m = EXPERT_TENSOR.match(name)
    return int(m.group(1)) if m else None


def split_paths(out: Path, n: int) -> list[Path]:
    """llama.cpp's split names for `out` (NAME.gguf → NAME-00001-of-0000n.gguf)."""
    stem = out.name[:-5] if out.name.endswith(".gguf") else out.name
    return [out.with_name(f"{stem}-{i + 1:05d}-of-{n:05d}.gguf") for i in range(n)]


def write_layout(src: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 recipe: str | None = None, split: bool = False) -> Layout:
    """Rewrite GGUF `src` into the expert-offload layout at `out` (or its split files)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    src, out = Path(src), Path(out)
    try:
        reader = GGUFReader(src)
    except Exception as err:
        raise EdgedsError(f"{src}: not a readable GGUF file ({err})") from None
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise EdgedsError(f"{src}: general.architecture is missing")
    arch = arch_field.contents()
    n_layer = int(reader.fields[f"{arch}.block_count"].contents())

    hot, experts = [], []
    for t in reader.tensors:
        layer = expert_layer(t.name)
        (hot if layer is None else experts).append(t)
    if not experts:
        raise EdgedsError(f"{src}: no routed-expert tensors (blk.N.ffn_*_exps); the layout is for MoE models")
    experts.sort(key=lambda t: (expert_layer(t.name), _PART[EXPERT_TENSOR.match(t.name).group(2)]))
    expert_bytes = [0] * n_layer
    for t in experts:
        expert_bytes[expert_layer(t.name)] += int(t.n_bytes)
    hot_bytes = sum(int(t.n_bytes) for t in hot)

    tmp = out.with_name(out.name[:-5] + ".partial.gguf" if out.name.endswith(".gguf") else out.name + ".partial")
    writer = GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        name = field.name
        if name.startswith("GGUF.") or name == "general.architecture" or name.startswith("split."):
            continue
        if name.startswith("edgeds.layout.") or name == KEY_RECIPE:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub)
    writer.add_uint32(KEY_VERSION, LAYOUT_VERSION)
    writer.add_uint64(KEY_HOT_BYTES, hot_bytes)
    writer.add_array(KEY_EXPERT_BYTES, expert_bytes)
    if recipe:
        writer.add_string(KEY_RECIPE, recipe)

    for t in hot:
        writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    if split:
        writer.tensors.append({})
    for t in experts:
        writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)

    temps = split_paths(tmp, 2) if split else [tmp]
    finals = split_paths(out, 2) if split else [out]
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        for t_path, f_path in zip(temps, finals):
            os.replace(t_path, f_path)
    except OSError as err:
        raise EdgedsError(f"{out}: cannot write ({err.strerror or err})") from None
    finally:
        for t_path in temps:
            t_path.unlink(missing_ok=True)
    return Layout(hot_bytes, tuple(expert_bytes), tuple(finals))


def read_layout(path: str | os.PathLike[str]) -> Layout | None:
    """The `edgeds.layout.*` record of a file, or None when it has none."""
    from gguf import GGUFReader

    reader = GGUFReader(Path(path))
    version = reader.fields.get(KEY_VERSION)
    if version is None:
        return None
    return Layout(int(reader.fields[KEY_HOT_BYTES].contents()),
                  tuple(int(x) for x in reader.fields[KEY_EXPERT_BYTES].contents()), (Path(path),))
