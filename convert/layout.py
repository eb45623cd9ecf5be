"""The expert-offload layout for MoE GGUF files.

Non-expert ("hot") tensors come first, then each layer's routed-expert tensors
(`blk.N.ffn_{gate,up,down}_exps.weight`) layer by layer, so the part that stays on the GPU is one
contiguous range and each layer's experts another. `edgeds.layout.*` keys record the layout version,
the hot bytes and the expert bytes per layer, and `edgeds.quant.recipe` the recipe (read back as
`read_gguf(path).layout`). With `split`, the file is written in llama.cpp's multi-file form
(`NAME-00001-of-00002.gguf`, `split.*` keys) with the boundary between hot tensors and experts.
Stock llama.cpp loads either form.

The rewrite reads the source with edgeds.catalog.gguf and hands gguf-py's GGUFWriter each tensor's
bytes from the source's memory map; outputs are written under temporary names and renamed only
when complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from edgeds.catalog.gguf import (EXPERT_TENSOR, KEY_EXPERT_BYTES, KEY_HOT_BYTES, KEY_LAYOUT_VERSION, KEY_RECIPE,
                                 GgufFile, TensorInfo, check_model, expert_layer, read_file, split_paths)
from edgeds.convert.outputs import discard, partial
from edgeds.errors import EdgedsError

LAYOUT_VERSION = 1
_PART = {"gate": 0, "up": 1, "down": 2}


def copy_metadata(source: GgufFile, writer, skip: Callable[[str], bool] = lambda key: False) -> None:
    """Add the keys of `source` (read with `arrays=True`) to a gguf-py GGUFWriter with their own value
    types, except general.architecture (the writer adds it) and the keys `skip` names."""
    for key, value in source.metadata.items():
        if key != "general.architecture" and not skip(key):
            vtype, item = source.value_types[key]
            writer.add_key_value(key, value, vtype, item)


def _add_tensor(writer, source: GgufFile, t: TensorInfo) -> None:
    """Hand a tensor's stored bytes, memory-mapped, to a gguf-py GGUFWriter."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    kind = GGMLQuantizationType[t.ggml_type]
    block, type_size = GGML_QUANT_SIZES[kind]
    byte_shape = (*t.shape[:-1], t.shape[-1] // block * type_size)
    writer.add_tensor(t.name, source.data(t.name).reshape(byte_shape), raw_shape=byte_shape, raw_dtype=kind)


def _written_anew(key: str) -> bool:
    """Keys the rewrite writes itself: the split and layout records."""
    return key.startswith(("split.", "edgeds.layout.")) or key == KEY_RECIPE


def _writer(paths: list[Path], arch: str):
    """gguf-py's GGUFWriter writing its file(s) to `paths` (it would name split files itself)."""
    from gguf import GGUFWriter

    class Writer(GGUFWriter):
        def format_shard_names(self, path: Path) -> list[Path]:
            return paths

    return Writer(paths[0], arch)


def write_layout(src: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 recipe: str | None = None, split: bool = False) -> tuple[Path, ...]:
    """Rewrite GGUF `src` into the expert-offload layout at `out` (or its split files); returns the files."""
    src, out = Path(src), Path(out)
    source = read_file(src, arrays=True)
    check_model(src, source.metadata, source.tensors)
    arch = source.metadata.get("general.architecture")
    n_layer = source.metadata.get(f"{arch}.block_count")
    if n_layer is None:
        raise EdgedsError(f"{src}: general.architecture or {arch}.block_count is missing")

    hot, experts = [], []
    for t in source.tensors:
        (hot if expert_layer(t.name) is None else experts).append(t)
    if not experts:
        raise EdgedsError(f"{src}: no routed-expert tensors (blk.N.ffn_*_exps); the layout is for MoE models")
    experts.sort(key=lambda t: (expert_layer(t.name), _PART[EXPERT_TENSOR.match(t.name).group(2)]))
    expert_bytes = [0] * n_layer
    for t in experts:
        expert_bytes[expert_layer(t.name)] += t.n_bytes
    hot_bytes = sum(t.n_bytes for t in hot)

    finals = split_paths(out, 2) if split else [out]
    temps = [partial(f) for f in finals]  # NAME-00001-of-00002.gguf.partial: never a finished name
    writer = _writer(temps, arch)
    copy_metadata(source, writer, skip=_written_anew)
    writer.add_uint32(KEY_LAYOUT_VERSION, LAYOUT_VERSION)
    writer.add_uint64(KEY_HOT_BYTES, hot_bytes)
    writer.add_array(KEY_EXPERT_BYTES, expert_bytes)
    if recipe:
        writer.add_string(KEY_RECIPE, recipe)

    for t in hot:
        _add_tensor(writer, source, t)
    if split:
        writer.tensors.append({})
    for t in experts:
        _add_tensor(writer, source, t)

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
        discard(*temps)
    return tuple(finals)
