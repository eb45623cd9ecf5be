"""Placement: which layers go to the GPU and which layers' routed experts stay in CPU RAM.

The policy is llama.cpp's `--n-cpu-moe N` (the routed experts of the first N layers on CPU, every
layer offloaded), with N chosen automatically: attention, shared experts, norms and the output head
are small and used by every token, so they go to the GPU first; the routed experts (most of a
DeepSeek MoE's bytes, each token reading only a few) fill what VRAM is left, from the last layer
down. A dense model, or `--moe-offload none`, gets classic layer offload (as many whole layers as
fit, like Ollama). The plan never puts more on the GPU than its free memory minus the KV cache
and compute buffers of the wanted context.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from edgeds.catalog.gguf import expert_layer
from edgeds.errors import UsageError
from edgeds.llamacpp.binding import LoadOptions, TensorOverride
from edgeds.machine.memory import GiB, Estimate, Geometry, default_n_ctx, estimate, gpu_reserve

_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class TensorTable:
    """What placement needs to know about a model: bytes per layer and its geometry."""

    n_layer: int
    layer_hot: tuple[int, ...]      # per layer: attention, norms, router, shared/dense FFN
    layer_experts: tuple[int, ...]  # per layer: routed experts (0 for dense layers)
    other: int                      # token_embd, output_norm, output (the non-layer tensors)
    output: int                     # the part of `other` that is offloaded with the last layer
    geometry: Geometry

    @property
    def is_moe(self) -> bool:
        return any(self.layer_experts)

    @property
    def total(self) -> int:
        return sum(self.layer_hot) + sum(self.layer_experts) + self.other

    @property
    def kv_per_token_layer(self) -> int:
        """f16 KV cache bytes per token and layer."""
        return self.geometry.kv_bytes_per_token() // max(self.n_layer, 1)

    def estimate(self, n_ctx: int) -> Estimate:
        """The memory model's estimate for this table at `n_ctx` (what `edgeds fit` counts)."""
        return estimate(self.geometry, self.total, n_ctx, expert_weights=sum(self.layer_experts))

    @classmethod
    def from_gguf(cls, info) -> "TensorTable":
        """From a `catalog.gguf.GgufInfo`."""
        geom = Geometry.from_metadata(info.metadata)
        n_layer = geom.n_layers
        hot, exps = [0] * n_layer, [0] * n_layer
        other = output = 0
        for t in info.tensors:
            layer = expert_layer(t.name)
            if layer is not None and layer < n_layer:
                exps[layer] += t.n_bytes
                continue
            m = _LAYER.match(t.name)
            if m and int(m.group(1)) < n_layer:
                hot[int(m.group(1))] += t.n_bytes
                continue
            if m:  # layers past block_count (DeepSeek-V3's MTP module) are not loaded for inference
                continue
            other += t.n_bytes
            if not t.name.startswith("token_embd"):  # the embedding lookup stays on the CPU
                output += t.n_bytes
        return cls(n_layer, tuple(hot), tuple(exps), other, output, geom)


@dataclass(frozen=True)
class Placement:
    """A placement plan: how to load the model, its context, and why, in one line."""

    load_options: LoadOptions
    n_ctx: int
    explanation: str
    gpu_bytes: int = 0
    cpu_experts_layers: tuple[int, ...] = ()
    memory: Estimate | None = None  # the memory model's estimate the plan was made with


def expert_overrides(layers) -> tuple[TensorOverride, ...]:
    """CPU overrides for the routed experts of `layers` (one regex per contiguous run)."""
    layers = sorted(layers)
    if not layers:
        return ()
    alternatives = "|".join(str(i) for i in layers)
    return (TensorOverride(rf"^blk\.({alternatives})\.ffn_(gate|up|down)_exps\.", "CPU"),)


def _ranges(layers) -> str:
    layers = sorted(layers)
    if not layers:
        return "none"
    runs, start, prev = [], layers[0], layers[0]
    for x in layers[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        runs.append(f"{start}-{prev}" if prev != start else f"{start}")
        if x is not None:
            start = prev = x
    return ",".join(runs)


def parse_moe_offload(value: str) -> str | int:
    v = str(value).strip().lower()
    if v in ("auto", "all", "none"):
        return v
    if v.isdigit():
        return int(v)
    raise UsageError(f"--moe-offload {value!r}: use auto, all, none or a number of layers")


def plan(table: TensorTable, *, gpu_free: int, moe_offload: str = "auto", n_ctx: int | None = None,
         gpu_total: int | None = None, gpu_name: str = "GPU") -> Placement:
    """The placement for a tensor table and `gpu_free` bytes of VRAM (0: CPU only)."""
    mode = parse_moe_offload(moe_offload)
    if n_ctx is None:
        from edgeds.machine.hardware import memory

        n_ctx = default_n_ctx(table.geometry, table.total, memory()[1])
    placement = _plan(table, gpu_free, mode, n_ctx, gpu_total, gpu_name)
    return replace(placement, memory=table.estimate(n_ctx))


def _plan(table: TensorTable, gpu_free: int, mode: str | int, n_ctx: int, gpu_total: int | None,
          gpu_name: str) -> Placement:
    n_layer = table.n_layer
    moe_layers = [i for i in range(n_layer) if table.layer_experts[i]]
    gpu_total = gpu_total if gpu_total is not None else gpu_free
    kv_layer = table.kv_per_token_layer * n_ctx
    total_label = f"{gpu_total / GiB:.1f}"

    if gpu_free <= 0:
        cpu_layers = moe_layers if mode != "none" and table.is_moe else []
        if isinstance(mode, int):
            cpu_layers = moe_layers[:mode]
        what = f", experts of layers {_ranges(cpu_layers)} on CPU (overridden)" if cpu_layers else ""
        return Placement(LoadOptions(n_gpu_layers=0, overrides=expert_overrides(cpu_layers)), n_ctx,
                         f"CPU only: all {n_layer} layers on CPU{what}", 0, tuple(cpu_layers))

    budget = gpu_free - gpu_reserve(table.geometry, n_ctx)
    hot_all = sum(table.layer_hot) + table.output + kv_layer * n_layer

    def layer_offload(with_experts: bool) -> tuple[int, int]:
        """Whole layers from the last one down (llama.cpp offloads the last n_gpu_layers)."""
        used, n = 0, 0
        for i in reversed(range(n_layer)):
            cost = table.layer_hot[i] + kv_layer + (table.layer_experts[i] if with_experts else 0)
            if used + cost > budget:
                break
            used += cost
            n += 1
        if n == n_layer and used + table.output <= budget:
            return n_layer + 1, used + table.output  # the output layer too
        return n, used

    if mode == "none" or not table.is_moe:
        ngl, used = layer_offload(with_experts=True)
        shown = min(ngl, n_layer)
        what = "all layers" if ngl > n_layer else f"{shown}/{n_layer} layers"
        return Placement(LoadOptions(n_gpu_layers=ngl), n_ctx,
                         f"{gpu_name} {used / GiB:.1f}/{total_label} GiB: {what} on GPU (layer offload)", used)

    if isinstance(mode, int) or mode == "all":
        cpu_layers = moe_layers if mode == "all" else moe_layers[:mode]
        if hot_all + sum(table.layer_experts[i] for i in moe_layers if i not in cpu_layers) <= budget:
            used = hot_all + sum(table.layer_experts[i] for i in moe_layers if i not in cpu_layers)
            return _moe_plan(table, n_layer + 1, cpu_layers, used, n_ctx, gpu_name, total_label)
        # the forced choice does not fit whole: offload fewer layers, their experts as asked
        ngl, used = _partial(table, budget, kv_layer, set(cpu_layers))
        return _moe_plan(table, ngl, cpu_layers, used, n_ctx, gpu_name, total_label)

    # auto
    ngl, used = layer_offload(with_experts=True)
    if ngl > n_layer:
        return Placement(LoadOptions(n_gpu_layers=ngl), n_ctx,
                             f"{gpu_name} {used / GiB:.1f}/{total_label} GiB: everything on GPU", used)
    if hot_all <= budget:
        room = budget - hot_all
        keep_on_gpu = []
        for i in reversed(moe_layers):  # experts of the last layers go on the GPU
            if table.layer_experts[i] > room:
                break
            room -= table.layer_experts[i]
            keep_on_gpu.append(i)
        cpu_layers = [i for i in moe_layers if i not in keep_on_gpu]
        used = budget - room
        return _moe_plan(table, n_layer + 1, cpu_layers, used, n_ctx, gpu_name, total_label)
    ngl, used = _partial(table, budget, kv_layer, set(moe_layers))
    return _moe_plan(table, ngl, moe_layers, used, n_ctx, gpu_name, total_label)


def _partial(table: TensorTable, budget: int, kv_layer: int, cpu_expert_layers: set[int]) -> tuple[int, int]:
    used, n = 0, 0
    for i in reversed(range(table.n_layer)):
        cost = table.layer_hot[i] + kv_layer + (0 if i in cpu_expert_layers else table.layer_experts[i])
        if used + cost > budget:
            break
        used += cost
        n += 1
    return n, used


def _moe_plan(table, ngl, cpu_layers, used, n_ctx, gpu_name, total_label) -> Placement:
    n_layer = table.n_layer
    on_gpu = "attention+shared on GPU" if ngl > n_layer else f"{min(ngl, n_layer)}/{n_layer} layers on GPU"
    experts = f"experts of layers {_ranges(cpu_layers)} on CPU" if cpu_layers else "all experts on GPU"
    return Placement(LoadOptions(n_gpu_layers=ngl, overrides=expert_overrides(cpu_layers)), n_ctx,
                     f"{gpu_name} {used / GiB:.1f}/{total_label} GiB: {on_gpu}, {experts}", used, tuple(cpu_layers))


def plan_placement(model_path: str | os.PathLike[str], moe_offload: str = "auto", n_ctx: int | None = None, *,
                   gpu_free: int | None = None) -> Placement:
    """Plan the placement of a GGUF on this machine's first GPU (from llama.cpp's device list).

    Use it as `Engine(path, load_options=p.load_options, n_ctx=p.n_ctx)`."""
    from edgeds.catalog.gguf import read_gguf
    from edgeds.llamacpp import devices

    table = TensorTable.from_gguf(read_gguf(model_path))
    gpus = [d for d in devices.devices() if d.kind in ("gpu", "igpu")]
    name, total = ("GPU", 0)
    if gpu_free is None:
        gpu_free = gpus[0].free_bytes if gpus else 0
        if gpus:
            name, total = gpus[0].name, gpus[0].total_bytes
    return plan(table, gpu_free=gpu_free, moe_offload=moe_offload, n_ctx=n_ctx,
                gpu_total=total or gpu_free, gpu_name=name)
