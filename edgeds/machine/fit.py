"""Will it fit: a model + quant + context on a machine, before anything is downloaded or loaded.

A `Footprint` is what the memory model needs to know about a model file, from the registry
(before download) or from a GGUF's header. `verdict` turns its estimate into an answer for a
machine: fully on the GPU, GPU with routed experts in RAM, layers split GPU/CPU, CPU only, or
no, each with the largest context that still fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeds.machine import tensors
from edgeds.machine.placement import Placement, TensorTable, plan
from edgeds.machine.memory import GPU_RESERVE, OVERHEAD, Estimate, Geometry, estimate, gpu_reserve

CTX_STEP = 1024
GPU, EXPERTS_OFFLOADED, PARTIAL, CPU, NO = "gpu", "gpu+experts in RAM", "gpu+cpu layers", "cpu", "no"


@dataclass(frozen=True)
class Footprint:
    """A model file as the memory model sees it."""

    label: str
    geometry: Geometry
    context_limit: int   # the trained context length
    weights: int         # tensor bytes
    expert_weights: int  # the part of `weights` in routed-expert tensors

    def estimate(self, n_ctx: int) -> Estimate:
        return estimate(self.geometry, self.weights, n_ctx, expert_weights=self.expert_weights)

    table: TensorTable | None = None  # per-layer bytes, for a placement plan

    @classmethod
    def from_registry(cls, entry, source, *, type_for: Callable[[str], str] | None = None,
                      label: str | None = None) -> "Footprint":
        """A registry model sized from its shape (nothing downloaded): under `type_for` (a quant
        recipe's tensor types), or else as the published quant `source`, whose per-tensor types
        are not known (`tensors.sized_like_published`)."""
        geom = Geometry.from_shape(entry.shape, entry.context_length)
        shapes = tensors.tensor_shapes(entry.architecture, entry.shape)
        sizes = tensors.sized(shapes, type_for) if type_for else tensors.sized_like_published(shapes, source.size)
        table = TensorTable.from_sizes(sizes, geom)
        return cls(label or f"{entry.id}:{source.quant}", geom, entry.context_length, table.total,
                   sum(table.layer_experts), table)

    @classmethod
    def from_gguf(cls, info) -> "Footprint":
        """From a `catalog.gguf.GgufInfo` (exact weights from the tensor table)."""
        table = TensorTable.from_gguf(info)
        geom = table.geometry
        return cls(str(info.path), geom, geom.n_ctx_train or 4096, info.tensor_bytes, info.expert_bytes, table)

    def placement(self, *, vram: int, n_ctx: int, depth: int | None = None, extra_bytes: int = 0) -> Placement:
        """The placement plan for a GPU with `vram` bytes free (0: CPU only); `extra_bytes`: a
        draft model and its KV cache beside it (see `placement.plan`)."""
        return plan(self.table, gpu_free=vram, n_ctx=n_ctx, depth=depth, extra_bytes=extra_bytes)


def footprint(spec: str) -> Footprint:
    """A GGUF file, a name from `edgeds add`, or a registry id[:QUANT] or Ollama name (which
    need not be downloaded)."""
    from edgeds.catalog.gguf import read_gguf
    from edgeds.catalog.resolve import find, find_added

    path = Path(spec).expanduser()
    if not path.is_file() and (added := find_added(spec)) is not None:
        path = added.path
    if path.is_file():
        return Footprint.from_gguf(read_gguf(path))
    return Footprint.from_registry(*find(spec))


@dataclass(frozen=True)
class Fit:
    mode: str          # one of the verdict names above
    max_ctx: int       # largest context (multiple of CTX_STEP, <= the model's) that fits; 0 for "no"
    estimate: Estimate # at max_ctx (or at the smallest context for "no")
    gpu_bytes: int
    ram_bytes: int


def _max_ctx(per_token: int, budget: int, limit: int) -> int:
    if per_token <= 0:
        return limit if budget >= 0 else 0
    return min(limit, (budget // per_token // CTX_STEP) * CTX_STEP)


def verdict(model: Footprint, *, ram: int, vram: int, n_ctx: int | None = None) -> Fit:
    """The best placement for `model` with `ram` and `vram` bytes free, and its largest context
    up to `n_ctx` (default: the trained length).

    Order of preference: all on the GPU; GPU with routed experts in RAM (MoE); layers split
    GPU/CPU; CPU only; no. The GPU holds its weights, the KV cache and `gpu_reserve`; the host
    overhead is always in RAM.
    """
    limit = n_ctx or model.context_limit
    geom = model.geometry
    per_tok = geom.kv_bytes_per_token()
    base = model.estimate(CTX_STEP)
    reserve = gpu_reserve(geom, CTX_STEP)
    host_ram = ram - OVERHEAD
    if vram > reserve:
        n = _max_ctx(per_tok, vram - reserve - model.weights, limit)
        if n >= CTX_STEP and host_ram >= 0:
            e = model.estimate(n)
            return Fit(GPU, n, e, e.total - e.overhead, e.overhead)
        hot = model.weights - model.expert_weights
        if model.expert_weights and model.expert_weights <= host_ram:
            n = _max_ctx(per_tok, vram - reserve - hot, limit)
            if n >= CTX_STEP:
                e = model.estimate(n)
                return Fit(EXPERTS_OFFLOADED, n, e, e.total - e.overhead - e.expert_weights,
                           e.expert_weights + e.overhead)
        n = _max_ctx(per_tok, vram - reserve + host_ram - model.weights, limit)
        if n >= CTX_STEP and vram > reserve + per_tok * CTX_STEP:
            e = model.estimate(n)
            on_gpu = vram - GPU_RESERVE
            return Fit(PARTIAL, n, e, on_gpu, e.total - on_gpu)
    n = _max_ctx(per_tok, host_ram - model.weights - base.compute - base.output, limit)
    if n >= CTX_STEP:
        e = model.estimate(n)
        return Fit(CPU, n, e, 0, e.total)
    return Fit(NO, 0, base, 0, base.total)


def registry_verdicts(*, ram: int, vram: int):
    """(Footprint, Fit) for every quant of every registry model (`edgeds doctor`)."""
    from edgeds.catalog.registry import load_registry

    for entry in load_registry():
        for source in entry.quants.values():
            model = Footprint.from_registry(entry, source)
            yield model, verdict(model, ram=ram, vram=vram)
