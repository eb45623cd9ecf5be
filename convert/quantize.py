"""Quantize a GGUF with llama.cpp's own quantizer (`edgeds.llamacpp.quantizer`), following a recipe.

The recipe's rules go to llama.cpp as `tt_overrides`; its dry run gives each tensor's final type
and size (llama.cpp logs them), which `plan_quantization` returns before anything is written.
Output goes to `OUT.partial` and is renamed only when complete.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeds.convert.recipes import Recipe, FTYPES, GGML_TYPES, get_recipe
from edgeds.errors import EdgedsError

if TYPE_CHECKING:
    import numpy as np

    from edgeds.catalog.gguf import GgufInfo


class QuantizeError(EdgedsError):
    """The quantization could not be done (bad input, missing imatrix, llama.cpp failure)."""


@dataclass(frozen=True)
class TensorQuant:
    """One tensor's type and size before and after, as llama.cpp's dry run plans them."""

    name: str
    shape: tuple[int, ...]
    old_type: str
    new_type: str
    new_bytes: int


@dataclass(frozen=True)
class QuantPlan:
    recipe: Recipe
    tensors: tuple[TensorQuant, ...]

    @property
    def total_bytes(self) -> int:
        return sum(t.new_bytes for t in self.tensors)


# "[   3/  40]   blk.0.attn_k.weight  - [  576,   512,  1,  1], type =    f16, size = ... -> ... (q8_0)"
_DRY_LINE = re.compile(
    r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[([^\]]*)\], type =\s*(\w+), size =\s*([\d.]+) MiB(?: ->\s*[\d.]+ MiB \((\w+)\))?"
)


# What llama.cpp copies rather than requantizes: unquantized tensor types.
PLAIN_TYPES = frozenset({"f32", "f16", "bf16"})
REQUANTIZE_HINT = ("; --allow-requantize quantizes it anyway (each tensor then carries the rounding of both "
                   "quants: better start from the F16/BF16 file)")


def _run(src: Path, dst: Path, recipe: Recipe, *, dry_run: bool, nthread: int, imatrix=(),
         allow_requantize: bool = False) -> list[str]:
    """llama.cpp's quantizer following `recipe`; returns its log."""
    from edgeds.llamacpp.quantizer import quantize as llama_quantize

    overrides = [(pattern, GGML_TYPES[ttype]) for pattern, ttype in recipe.rules]
    try:
        return llama_quantize(src, dst, FTYPES[recipe.base], overrides=overrides, imatrix=imatrix,
                              pure=recipe.pure, dry_run=dry_run, allow_requantize=allow_requantize,
                              nthread=nthread)
    except EdgedsError as err:
        raise QuantizeError(str(err) + (REQUANTIZE_HINT if "requantizing" in str(err) else "")) from None


def _check_source(src: Path) -> GgufInfo:
    """The source's header, checked (edgeds.catalog.gguf) before llama.cpp sees the file, which
    aborts the process on some hyperparameters instead of failing."""
    from edgeds.catalog.gguf import read_gguf

    if not src.is_file():
        raise QuantizeError(f"{src}: no such file")
    try:
        return read_gguf(src)
    except EdgedsError as err:
        raise QuantizeError(str(err)) from None


def _check_imatrix(recipe: Recipe, imatrix) -> None:
    if recipe.needs_imatrix and imatrix is None:
        raise QuantizeError(
            f"{recipe.name} needs an importance matrix (llama.cpp refuses IQ1/IQ2/IQ3_XXS tensors without one): "
            "pass --imatrix FILE (make one with `edgeds imatrix MODEL.gguf`), or choose a K-quant recipe such as "
            "moe-q2 or Q2_K"
        )


def plan_quantization(src: str | os.PathLike[str], recipe: str | Recipe, *, nthread: int = 0,
                      allow_requantize: bool = False) -> QuantPlan:
    """Each tensor's final type and size, from llama.cpp's own dry run (nothing is written).

    llama.cpp's dry run plans a requantization it would then refuse; the plan refuses it the
    same way: a tensor already quantized that would change type needs `allow_requantize`.
    """
    from gguf import GGMLQuantizationType, GGML_QUANT_SIZES

    src = Path(src)
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    _check_source(src)
    log = _run(src, src.with_name(src.name + ".dry-run"), recipe, dry_run=True, nthread=nthread)
    tensors = []
    for m in _DRY_LINE.finditer("".join(log)):
        name, shape_text, old, size_mib, new = m.groups()
        shape = tuple(int(x) for x in shape_text.split(",") if x.strip())
        while len(shape) > 1 and shape[-1] == 1:
            shape = shape[:-1]
        new = new or old
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[new.upper()]]
        tensors.append(TensorQuant(name, shape, old, new, math.prod(shape) // block * type_size))
    if not tensors:
        raise QuantizeError(f"{src}: llama.cpp's dry run listed no tensors")
    requantized = next((t for t in tensors if t.old_type not in PLAIN_TYPES and t.new_type != t.old_type), None)
    if requantized is not None and not allow_requantize:
        raise QuantizeError(f"{src}: llama.cpp could not quantize it (requantizing from type {requantized.old_type} "
                            f"is disabled: {requantized.name}){REQUANTIZE_HINT}")
    return QuantPlan(recipe, tuple(tensors))


def quantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    recipe: str | Recipe,
    *,
    imatrix: str | os.PathLike[str] | None = None,
    nthread: int = 0,
    allow_requantize: bool = False,
) -> Path:
    """Quantize GGUF `src` to `dst` with a recipe name, llama.cpp type name or Recipe.

    The result keeps llama.cpp's tensor order; `edgeds.convert.layout` rearranges MoE files."""
    from edgeds.convert.outputs import check_output, discard, partial

    src, dst = Path(src), Path(dst)
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    source = _check_source(src)
    _check_imatrix(recipe, imatrix)
    check_output(dst, source.parts, error=QuantizeError)
    entries = _imatrix_entries(Path(imatrix)) if imatrix is not None else ()
    temporary = partial(dst)
    try:
        _run(src, temporary, recipe, dry_run=False, nthread=nthread, imatrix=entries, allow_requantize=allow_requantize)
        os.replace(temporary, dst)
    finally:
        discard(temporary)
    return dst


def _imatrix_entries(path: Path) -> list[tuple[str, np.ndarray]]:
    """An importance matrix (GGUF, llama.cpp's legacy .dat, or `REPO:FILE` on the hub) as the
    (NAME, mean squared activations) entries llama.cpp takes (edgeds.measure.imatrix)."""
    from edgeds.measure.imatrix import read_imatrix, resolve_imatrix

    return read_imatrix(resolve_imatrix(path)).importance()


def quantize_file(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    recipe: str | Recipe,
    *,
    imatrix: str | os.PathLike[str] | None = None,
    layout: str = "auto",
    split_experts: bool = False,
    nthread: int = 0,
    allow_requantize: bool = False,
) -> tuple[Path, ...]:
    """Quantize, then for MoE files (routed-expert tensors present) rewrite into the expert-offload
    layout with its edgeds.* metadata. Returns the written file(s)."""
    from edgeds.catalog.gguf import expert_layer, split_paths
    from edgeds.convert.layout import write_layout
    from edgeds.convert.outputs import check_output, discard

    src, out = Path(src), Path(out)
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    source = _check_source(src)
    is_moe = any(expert_layer(t.name) is not None for t in source.tensors)
    if split_experts and not is_moe:
        raise QuantizeError(f"{src}: --split-experts needs a MoE model (no blk.N.ffn_*_exps tensors)")
    for path in split_paths(out, 2) if split_experts else [out]:
        check_output(path, source.parts, error=QuantizeError)
    if layout == "plain" or not is_moe:
        return (quantize(src, out, recipe, imatrix=imatrix, nthread=nthread, allow_requantize=allow_requantize),)
    staged = out.with_name(out.name + ".quant.partial")
    try:
        quantize(src, staged, recipe, imatrix=imatrix, nthread=nthread, allow_requantize=allow_requantize)
        return write_layout(staged, out, recipe=recipe.name, split=split_experts)
    finally:
        discard(staged)
