"""Quantize a GGUF with llama.cpp's own quantizer (`llama_model_quantize`), following a recipe.

The recipe's rules go to llama.cpp as `tt_overrides`; its dry run gives each tensor's final type
and size (llama.cpp logs them), which `plan_quantization` returns before anything is written.
Output goes to `OUT.partial` and is renamed only when complete.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgeds.convert.recipes import Recipe, FTYPES, GGML_TYPES, get_recipe
from edgeds.errors import EdgedsError


class QuantizeError(EdgedsError):
    """The quantization could not be done (bad input, missing imatrix, llama.cpp failure)."""


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    old_type: str
    new_type: str
    new_bytes: int


@dataclass(frozen=True)
class QuantPlan:
    recipe: Recipe
    tensors: tuple[TensorPlan, ...]

    @property
    def total_bytes(self) -> int:
        return sum(t.new_bytes for t in self.tensors)


# "[   3/  40]   blk.0.attn_k.weight  - [  576,   512,  1,  1], type =    f16, size = ... -> ... (q8_0)"
_DRY_LINE = re.compile(
    r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[([^\]]*)\], type =\s*(\w+), size =\s*([\d.]+) MiB(?: ->\s*[\d.]+ MiB \((\w+)\))?"
)


def _params(recipe: Recipe, *, dry_run: bool, nthread: int, keep: list):
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[recipe.base]
    params.nthread = nthread
    params.pure = recipe.pure
    params.dry_run = dry_run
    if recipe.rules:
        arr = (llama_cpp.llama_model_tensor_override * (len(recipe.rules) + 1))()
        for i, (pattern, ttype) in enumerate(recipe.rules):
            encoded = pattern.encode()
            keep.append(encoded)
            arr[i].pattern = encoded
            arr[i].type = GGML_TYPES[ttype]
        arr[len(recipe.rules)].pattern = None
        keep.append(arr)
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    return params


def _run(src: Path, dst: Path, params, what: str) -> list[str]:
    import llama_cpp
    from edgeds.llamacpp.binding import captured_llama_log

    with captured_llama_log() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        text = "".join(log)
        reason = re.findall(r"(?:error|ERROR)[^\n]*?:\s*([^\n]+)", text)
        raise QuantizeError(f"{src}: llama.cpp could not {what} it ({reason[-1].strip() if reason else f'code {rc}'})")
    return log


def _check_source(src: Path) -> None:
    if not src.is_file():
        raise QuantizeError(f"{src}: no such file")
    with open(src, "rb") as f:
        if f.read(4) != b"GGUF":
            raise QuantizeError(f"{src}: not a GGUF file")


def _check_imatrix(recipe: Recipe, imatrix) -> None:
    if recipe.needs_imatrix and imatrix is None:
        raise QuantizeError(
            f"{recipe.name} needs an importance matrix (llama.cpp refuses IQ1/IQ2/IQ3_XXS tensors without one): "
            "pass --imatrix FILE (a GGUF imatrix from llama-imatrix), or choose a K-quant recipe such as moe-q2 or Q2_K"
        )


def plan_quantization(src: str | os.PathLike[str], recipe: str | Recipe, *, nthread: int = 0) -> QuantPlan:
    """Each tensor's final type and size, from llama.cpp's own dry run (nothing is written)."""
    src = Path(src)
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    _check_source(src)
    keep: list = []
    params = _params(recipe, dry_run=True, nthread=nthread, keep=keep)
    log = _run(src, src.with_name(src.name + ".dry-run"), params, "plan")
    from gguf import GGMLQuantizationType, GGML_QUANT_SIZES

    tensors = []
    for m in _DRY_LINE.finditer("".join(log)):
        name, shape_text, old, size_mib, new = m.groups()
        shape = tuple(int(x) for x in shape_text.split(",") if x.strip())
        while len(shape) > 1 and shape[-1] == 1:
            shape = shape[:-1]
        new = new or old
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[new.upper()]]
        n = 1
        for d in shape:
            n *= d
        tensors.append(TensorPlan(name, shape, old, new, n // block * type_size))
    if not tensors:
        raise QuantizeError(f"{src}: llama.cpp's dry run listed no tensors")
    return QuantPlan(recipe, tuple(tensors))


def quantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    recipe: str | Recipe,
    *,
    imatrix: str | os.PathLike[str] | None = None,
    nthread: int = 0,
) -> Path:
    """Quantize GGUF `src` to `dst` with a recipe name, llama.cpp type name or Recipe.

    The result keeps llama.cpp's tensor order; `edgeds.convert.layout` rearranges MoE files."""
    src, dst = Path(src), Path(dst)
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    _check_source(src)
    _check_imatrix(recipe, imatrix)
    if not dst.parent.is_dir():
        raise QuantizeError(f"{dst}: the folder {dst.parent} does not exist")
    keep: list = []
    params = _params(recipe, dry_run=False, nthread=nthread, keep=keep)
    if imatrix is not None:
        arr = _imatrix_array(Path(imatrix), keep)
        params.imatrix = ctypes.cast(arr, type(params.imatrix))
    partial = dst.with_name(dst.name + ".partial")
    try:
        _run(src, partial, params, "quantize")
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    return dst


def _imatrix_array(path: Path, keep: list):
    """A GGUF imatrix (llama-imatrix's `NAME.in_sum2` / `NAME.counts` tensors) as the
    NULL-terminated `llama_model_imatrix_data` array llama.cpp takes: mean squared activations."""
    import llama_cpp
    import numpy as np
    from gguf import GGUFReader

    if not path.is_file():
        raise QuantizeError(f"{path}: no such imatrix file")
    try:
        reader = GGUFReader(path)
    except Exception as err:  # gguf raises ValueError/struct errors on foreign files
        raise QuantizeError(f"{path}: not a GGUF imatrix ({err})") from None
    tensors = {t.name: t for t in reader.tensors}
    entries = []
    for name, t in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        counts = tensors.get(base + ".counts")
        if counts is None:
            raise QuantizeError(f"{path}: {base}.counts is missing")
        sums = np.asarray(t.data, dtype=np.float32).reshape(len(counts.data.reshape(-1)), -1)
        c = np.asarray(counts.data, dtype=np.float32).reshape(-1, 1)
        data = np.ascontiguousarray((sums / np.maximum(c, 1.0)).reshape(-1), dtype=np.float32)
        keep.append(data)
        entries.append((base.encode(), data))
    if not entries:
        raise QuantizeError(f"{path}: no imatrix entries (expected NAME.in_sum2 and NAME.counts tensors)")
    arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
    for i, (name, data) in enumerate(entries):
        keep.append(name)
        arr[i].name = name
        arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = data.size
    arr[len(entries)].name = None
    keep.append(arr)
    return arr


def quantize_file(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    recipe: str | Recipe,
    *,
    imatrix: str | os.PathLike[str] | None = None,
    layout: str = "auto",
    split_experts: bool = False,
    nthread: int = 0,
) -> tuple[Path, ...]:
    """Quantize, then for MoE files (routed-expert tensors present) rewrite into the expert-offload
    layout with its edgeds.* metadata. Returns the written file(s)."""
    from edgeds.convert.layout import expert_layer, write_layout
    from edgeds.catalog.gguf import _read_part

    src, out = Path(src), Path(out)
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    _check_source(src)
    is_moe = any(expert_layer(name) is not None for name, *_ in _read_part(src)[1])
    if split_experts and not is_moe:
        raise QuantizeError(f"{src}: --split-experts needs a MoE model (no blk.N.ffn_*_exps tensors)")
    if layout == "plain" or not is_moe:
        return (quantize(src, out, recipe, imatrix=imatrix, nthread=nthread),)
    staged = out.with_name(out.name + ".quant.partial")
    try:
        quantize(src, staged, recipe, imatrix=imatrix, nthread=nthread)
        return write_layout(staged, out, recipe=recipe.name, split=split_experts).files
    finally:
        staged.unlink(missing_ok=True)
