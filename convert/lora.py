"""PEFT LoRA adapter → llama.cpp's GGUF LoRA adapter (`edgeds convert-lora`).

The file llama.cpp's `llama_adapter_lora_init` loads: `general.type = adapter`,
`general.architecture` = the base model's, `adapter.type = lora`, `adapter.lora.alpha`, and for
each adapted weight `W` of the base GGUF the pair `W.lora_a` (rank × n_in) and `W.lora_b`
(n_out × rank), in PyTorch's order (llama.cpp's ne order reversed), as PEFT stores them.
llama.cpp adds `scale · alpha / rank · B·A·x` to `W·x` with the rank read from lora_b, so the
file's alpha is PEFT's `lora_alpha` (times sqrt(r) for rank-stabilized LoRA); a module whose PEFT
scale differs from alpha/rank (an `alpha_pattern`, rslora with a `rank_pattern`) has the
difference folded into its lora_b. Where the converter permutes a base weight's rows (llama's
q/k), lora_b's rows are permuted the same way.

The base architecture and shapes come from `--base` (a Hugging Face folder or repo id, or a
GGUF) or the adapter config's `base_model_name_or_path`; every pair is checked against them
before anything is written: a module outside convert/lora_targets.py's table, one llama.cpp
would not apply, or a shape that is not the base weight's fails with one line naming it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgeds.convert import _REPO_ID, _check_disk, _write
from edgeds.convert.adapter import LoraPair, PeftAdapter, resolve_adapter
from edgeds.convert.lora_targets import HEAD_KEYS, MERGE_ONLY, ROW_PERMUTED, TARGETS
from edgeds.convert.plan import TensorPlan
from edgeds.errors import ConversionError, EdgedsError

LORA_OUTTYPES = ("f32", "f16", "bf16")
_LAYER_MODULE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Base:
    """What the adapter is checked against: the base's GGUF architecture, its head counts, and the
    shape (numpy order) of each GGUF weight it has (`shape` returns None for one it lacks)."""

    arch: str
    where: str
    heads: dict[str, int]
    shape: Callable[[str], tuple[int, ...] | None]


def _deepseek2_has(cfg: dict[str, Any], layer: int, stem: str) -> bool:
    """deepseek2's first `first_k_dense_replace` layers have a dense FFN, the others shared experts."""
    dense = layer < int(cfg.get("first_k_dense_replace") or 0)
    if stem in ("ffn_gate", "ffn_up", "ffn_down"):
        return dense
    if stem.endswith("_shexp"):
        return not dense and int(cfg.get("n_shared_experts") or 0) > 0
    return True


def _base_from_config(cfg: dict[str, Any], where: str) -> Base:
    from edgeds.convert.arch import module_for
    from edgeds.convert.arch._config import checked_config

    cfg = checked_config(cfg, where)
    module = module_for(cfg, where=where)
    table, dims = module.shapes(cfg)
    n_layers = int(cfg.get("num_hidden_layers") or 0)
    arch = module.GGUF_ARCH

    def shape(name: str) -> tuple[int, ...] | None:
        m = _BLOCK_TENSOR.match(name)
        names = table.get(m.group(2) if m else name)
        if names is None or (m and int(m.group(1)) >= n_layers):
            return None
        if m and arch == "deepseek2" and not _deepseek2_has(cfg, int(m.group(1)), m.group(2).removesuffix(".weight")):
            return None
        return tuple(dims[n] for n in names)

    heads = int(cfg.get("num_attention_heads") or 0)
    return Base(arch, where, {"num_attention_heads": heads,
                              "num_key_value_heads": int(cfg.get("num_key_value_heads") or heads)}, shape)


def _base_from_gguf(path: Path) -> Base:
    from edgeds.catalog.gguf import read_file

    try:
        gguf = read_file(path)
    except EdgedsError as err:
        raise ConversionError(f"--base: {err}") from None
    arch = gguf.metadata.get("general.architecture")
    if gguf.metadata.get("general.type", "model") != "model" or not isinstance(arch, str):
        raise ConversionError(f"{path}: not a model GGUF (general.type {gguf.metadata.get('general.type')!r}, "
                              f"general.architecture {arch!r})")
    shapes = {t.name: t.shape for t in gguf.tensors}
    heads = {key: int(gguf.metadata.get(gguf_key.format(arch=arch)) or 0) for key, gguf_key in HEAD_KEYS.items()}
    return Base(arch, str(path), heads, shapes.get)


def load_base(spec: str | None, adapter: PeftAdapter, *, revision: str | None = None) -> Base:
    """The base model `--base` names, else the adapter config's `base_model_name_or_path`: a GGUF
    file, a Hugging Face folder (its config.json), or a hub repo id (its config.json only)."""
    from edgeds.convert.checkpoint import load_json

    origin = "--base" if spec else f"{adapter.folder / 'adapter_config.json'}: base_model_name_or_path"
    spec = spec or adapter.base
    if spec is None:
        raise ConversionError(f"{adapter.folder / 'adapter_config.json'}: no base_model_name_or_path; "
                              "pass --base (the base model's folder or GGUF)")
    path = Path(spec).expanduser()
    if path.is_file():
        return _base_from_gguf(path)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ConversionError(f"{origin} {spec}: the folder has no config.json")
        return _base_from_config(load_json(config, "the config"), str(config))
    if not _REPO_ID.match(spec):
        raise ConversionError(f"{origin} {spec!r}: no such file or folder (nor a hub repo id); pass --base")
    from edgeds.catalog.hub import download

    try:
        config = download(spec, "config.json", revision or "main", progress=False)
    except EdgedsError as err:
        raise ConversionError(f"{origin} {spec}: cannot get its config.json ({err}); pass --base") from None
    return _base_from_config(load_json(config, "the config"), f"{spec}/config.json")


def _gguf_weight(pair: LoraPair, base: Base, where: Path) -> str:
    """The base GGUF weight `pair` adapts, checked: a runtime target of the base architecture, in
    a layer the base has, with the base weight's shape."""
    m = _LAYER_MODULE.match(pair.module)
    targets = TARGETS.get(base.arch)
    if targets is None:
        raise ConversionError(f"{base.where}: architecture {base.arch!r} has no LoRA support "
                              f"(supported: {', '.join(TARGETS)})")
    suffix = m.group(2) if m else pair.module
    if m is None or suffix not in targets:
        if m and base.arch in MERGE_ONLY and re.match(MERGE_ONLY[base.arch], suffix):
            raise ConversionError(f"{where}: target module {suffix} ({pair.module}): llama.cpp's {base.arch} graph "
                                  "does not apply adapters to it; bake the adapter into the weights instead: "
                                  "`edgeds convert BASE --merge-lora ADAPTER`")
        raise ConversionError(f"{where}: target module {suffix} ({pair.module}) is not supported for {base.arch} "
                              f"(supported: {', '.join(t.rsplit('.', 1)[-1] for t in targets)})")
    name = f"blk.{m.group(1)}.{targets[suffix]}.weight"
    shape = base.shape(name)
    if shape is None:
        raise ConversionError(f"{where}: {pair.module}: the base model ({base.where}) has no {name}")
    if tuple(shape) != (pair.n_out, pair.n_in):
        raise ConversionError(f"{where}: shape mismatch for {pair.module}: lora_B·lora_A is [{pair.n_out}, {pair.n_in}], "
                              f"the base weight {name} is {list(shape)} (an adapter for another model?)")
    return name


def _check_trained_on(adapter: PeftAdapter, base: Base) -> None:
    """The model class PEFT recorded (`auto_mapping.base_model_class`) is of the base's architecture."""
    from edgeds.convert.arch import ARCHITECTURES

    mapping = adapter.config.get("auto_mapping")
    trained = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    arch = ARCHITECTURES.get(trained) if isinstance(trained, str) else None
    if arch is not None and arch != base.arch:
        raise ConversionError(f"{adapter.folder / 'adapter_config.json'}: an adapter for {trained} ({arch}), "
                              f"but the base model {base.where} is {base.arch}")


def _rows_permuted(b: np.ndarray, heads: int) -> np.ndarray:
    from edgeds.convert.arch.llama import interleave_rope_rows

    return interleave_rope_rows(b, heads)


def _produce(name: str, transform: Callable[[np.ndarray], np.ndarray] | None, tensors) -> Iterator[np.ndarray]:
    values = tensors.read(name)
    yield transform(values) if transform is not None else values


def _b_transform(factor: float, heads: int | None) -> Callable[[np.ndarray], np.ndarray] | None:
    if factor == 1.0 and heads is None:
        return None

    def transform(b: np.ndarray) -> np.ndarray:
        out = _rows_permuted(b, heads) if heads is not None else b
        return out * np.float32(factor) if factor != 1.0 else out

    return transform


def gguf_alpha(adapter: PeftAdapter) -> float:
    """The file's `adapter.lora.alpha`: llama.cpp scales by alpha / rank."""
    return adapter.alpha * math.sqrt(adapter.rank) if adapter.rslora else adapter.alpha


def plan_adapter(adapter: PeftAdapter, base: Base) -> list[TensorPlan]:
    """Every `.lora_a` / `.lora_b` tensor in block order, checked against `base`."""
    where = adapter.folder / "adapter_model.safetensors"
    alpha = gguf_alpha(adapter)
    permuted = ROW_PERMUTED.get(base.arch, {})
    named = []
    for pair in adapter.pairs:
        name = _gguf_weight(pair, base, where)
        suffix = _LAYER_MODULE.match(pair.module).group(2)
        heads = base.heads[permuted[suffix]] if suffix in permuted else None
        if heads is not None and (heads <= 0 or pair.n_out % (2 * heads)):
            raise ConversionError(f"{where}: {pair.module}: {pair.n_out} rows do not split into {heads} heads")
        factor = pair.scale / (alpha / pair.rank)
        named.append((name, pair, heads, 1.0 if math.isclose(factor, 1.0, rel_tol=1e-6) else factor))
    seen: set[str] = set()
    plans: list[TensorPlan] = []
    order = list(TARGETS[base.arch].values())
    for name, pair, heads, factor in sorted(named, key=lambda x: (int(_BLOCK_TENSOR.match(x[0]).group(1)),
                                                                   order.index(x[0].split(".")[2]))):
        if name in seen:
            raise ConversionError(f"{where}: two modules adapt {name}")
        seen.add(name)
        plans.append(TensorPlan(name + ".lora_a", (pair.rank, pair.n_in), (pair.a,), partial(_produce, pair.a, None)))
        plans.append(TensorPlan(name + ".lora_b", (pair.n_out, pair.rank), (pair.b,),
                                partial(_produce, pair.b, _b_transform(factor, heads))))
    return plans


def convert_lora(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    base: str | None = None,
    outtype: str = "f16",
    revision: str | None = None,
    progress: bool = False,
) -> Path:
    """Convert the PEFT LoRA adapter `src` (a folder or hub repo id) into a GGUF adapter at `out`.

    Args:
        base: the base model (a Hugging Face folder or repo id, or a GGUF); default: the
            adapter config's `base_model_name_or_path`.
        outtype: f32, f16 or bf16 for the lora tensors.
        revision: hub revision when `src` is a repo id.

    Raises:
        ConversionError: a bad adapter, an unsupported module, a mismatch with the base; nothing is
            left at `out` or `out.partial`.
    """
    from edgeds.convert import gguf_writer as gw
    from edgeds.convert.outputs import check_output, partial as partial_name

    out = Path(out).expanduser()
    check_output(out, error=ConversionError)
    if outtype not in LORA_OUTTYPES:
        raise ConversionError(f"outtype {outtype!r} is not one of {', '.join(LORA_OUTTYPES)} for an adapter")
    adapter = PeftAdapter(resolve_adapter(src, revision=revision))
    check_output(out, adapter.files, error=ConversionError)
    base_model = load_base(base, adapter, revision=None)
    _check_trained_on(adapter, base_model)
    plans = plan_adapter(adapter, base_model)
    writer = gw.GGUFWriter()
    name = str(src).rstrip("/").split("/")[-1] or adapter.folder.name
    for key, value in {"general.architecture": base_model.arch, "general.type": "adapter", "general.name": name,
                       "adapter.type": "lora", "adapter.lora.alpha": float(gguf_alpha(adapter))}.items():
        writer.add(key, value)
    ttype = gw.OUTTYPES[outtype][0]
    for p in plans:
        writer.add_tensor(p.name, p.shape, ttype)
    _check_disk(out, writer.total_size)
    partial_path = partial_name(out)
    _write(adapter.tensors, plans, writer, partial_path, progress)
    os.replace(partial_path, out)
    return out
