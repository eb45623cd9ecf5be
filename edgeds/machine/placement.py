"""Placement: which layers go to the GPU and which routed-expert tensors stay in CPU RAM.

llama.cpp offloads the last `n_gpu_layers` layers (one more: the output head too) and keeps any
tensor a buffer override names in CPU RAM. `--moe-offload auto` chooses among all the plans of
that form with the decode cost model (`decode_cost.py`): the first k layers whole on the CPU, the
rest on the GPU with their attention, shared experts and KV cache, then the routed experts of as
many of those layers as fit, from the last layer down, then single expert tensors (down_proj
first) in the VRAM that is left. k = 0 with every expert on the GPU is "everything on GPU"; the
largest plan with no expert on the CPU is classic layer offload (`none`, like Ollama); `all` and
`N` keep the experts of every MoE layer, or of the first N, in CPU RAM (llama.cpp's --n-cpu-moe N).
Which plan is fastest depends on the depth the model will decode at: expert offload keeps all
attention on the GPU and wins at depth, layer offload crosses devices less and wins when the
context is short. A plan never puts more on the GPU than its free memory less `gpu_reserve`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable

from edgeds.catalog.gguf import EXPERT_TENSOR
from edgeds.errors import UsageError
from edgeds.llamacpp.binding import LoadOptions, TensorOverride
from edgeds.machine.decode_cost import TokenWork, seconds_per_token
from edgeds.machine.memory import GiB, Estimate, Geometry, default_n_ctx, estimate, gpu_reserve

_LAYER = re.compile(r"^blk\.(\d+)\.")
PARTS = ("down", "gate", "up")  # the order single expert tensors go to the GPU


@dataclass(frozen=True)
class TensorTable:
    """What placement needs to know about a model: bytes per layer and its geometry."""

    n_layer: int
    layer_hot: tuple[int, ...]      # per layer: attention, norms, router, shared/dense FFN
    layer_experts: tuple[int, ...]  # per layer: routed experts (0 for dense layers)
    other: int                      # token_embd, output_norm, output (the non-layer tensors)
    output: int                     # the part of `other` that is offloaded with the last layer
    geometry: Geometry
    expert_parts: tuple[dict[str, int], ...] = ()  # per layer: bytes of its down/gate/up expert tensors

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

    def part_bytes(self, layer: int, part: str) -> int:
        if self.expert_parts:
            return self.expert_parts[layer].get(part, 0)
        return self.layer_experts[layer] // len(PARTS)

    def estimate(self, n_ctx: int) -> Estimate:
        """The memory model's estimate for this table at `n_ctx` (what `edgeds fit` counts)."""
        return estimate(self.geometry, self.total, n_ctx, expert_weights=sum(self.layer_experts))

    @classmethod
    def from_sizes(cls, sizes: Iterable[tuple[str, int]], geometry: Geometry) -> "TensorTable":
        """From (tensor name, bytes) pairs: a GGUF's tensor table, or one sized from a registry shape."""
        n_layer = geometry.n_layers
        hot = [0] * n_layer
        parts: list[dict[str, int]] = [{} for _ in range(n_layer)]
        other = output = 0
        for name, nbytes in sizes:
            m = EXPERT_TENSOR.match(name)
            if m and int(m.group(1)) < n_layer:
                part = parts[int(m.group(1))]
                part[m.group(2)] = part.get(m.group(2), 0) + nbytes
                continue
            m = _LAYER.match(name)
            if m and int(m.group(1)) < n_layer:
                hot[int(m.group(1))] += nbytes
                continue
            if m:  # layers past block_count (DeepSeek-V3's MTP module) are not loaded for inference
                continue
            other += nbytes
            if not name.startswith("token_embd"):  # the embedding lookup stays on the CPU
                output += nbytes
        experts = tuple(sum(p.values()) for p in parts)
        return cls(n_layer, tuple(hot), experts, other, output, geometry, tuple(parts))

    @classmethod
    def from_gguf(cls, info) -> "TensorTable":
        """From a `catalog.gguf.GgufInfo`."""
        return cls.from_sizes(((t.name, t.n_bytes) for t in info.tensors), Geometry.from_metadata(info.metadata))


@dataclass(frozen=True)
class Placement:
    """A placement plan: how to load the model, its context, and why, in one line."""

    load_options: LoadOptions
    n_ctx: int
    explanation: str
    gpu_bytes: int = 0
    cpu_experts_layers: tuple[int, ...] = ()  # GPU layers whose expert tensors are all in CPU RAM
    memory: Estimate | None = None  # the memory model's estimate the plan was made with
    decode_tok_s: float = 0.0       # the cost model's prediction at `depth`
    depth: int = 0                  # the context depth the plan was chosen for


@dataclass(frozen=True)
class _Layout:
    """One candidate: the last `n_gpu_layers` layers on the GPU, with some of their expert tensors
    kept in CPU RAM; n_gpu_layers = n_layer + 1 puts the output head on the GPU too."""

    n_gpu_layers: int
    cpu_parts: tuple[tuple[int, frozenset[str]], ...]  # (GPU layer, its expert parts in CPU RAM)
    gpu_bytes: int


def parse_moe_offload(value: str) -> str | int:
    v = str(value).strip().lower()
    if v in ("auto", "all", "none"):
        return v
    if v.isdigit():
        return int(v)
    raise UsageError(f"--moe-offload {value!r}: use auto, all, none or a number of layers")


def plan(table: TensorTable, *, gpu_free: int, moe_offload: str = "auto", n_ctx: int | None = None,
         depth: int | None = None, gpu_total: int | None = None, gpu_name: str = "GPU",
         extra_bytes: int = 0) -> Placement:
    """The placement for a tensor table and `gpu_free` bytes of VRAM (0: CPU only), for decoding
    at `depth` tokens of context (default: the whole `n_ctx`, as a long reasoning trace fills it).
    `extra_bytes`: what a second model loaded beside it takes (a draft model and its KV cache,
    which go to the GPU when there is one): it comes off the GPU budget, or off the RAM the
    default context is sized from."""
    mode = parse_moe_offload(moe_offload)
    if n_ctx is None:
        from edgeds.machine.hardware import memory

        n_ctx = default_n_ctx(table.geometry, table.total + (0 if gpu_free > 0 else extra_bytes), memory()[1])
    depth = min(depth or n_ctx, n_ctx)
    if gpu_free <= 0:
        layout = _Layout(0, (), 0)
    else:
        budget = gpu_free - gpu_reserve(table.geometry, n_ctx) - extra_bytes
        layout = _choose(table, budget, mode, table.kv_per_token_layer * n_ctx, depth)
    tok_s = 1.0 / seconds_per_token(_work(table, layout, depth))
    cpu_parts = _overridden_parts(table, layout, mode)
    explanation = _explain(table, layout, cpu_parts, mode, gpu_name, gpu_total if gpu_total is not None else gpu_free)
    return Placement(LoadOptions(n_gpu_layers=layout.n_gpu_layers, overrides=_overrides(cpu_parts)), n_ctx,
                     f"{explanation} (est. {tok_s:.0f} tok/s at depth {depth})", layout.gpu_bytes,
                     _whole_layers(cpu_parts), table.estimate(n_ctx), round(tok_s, 1), depth)


# ---------------------------------------------------------------------------------------------
# Candidates


def _choose(table: TensorTable, budget: int, mode: str | int, kv_layer: int, depth: int) -> _Layout:
    moe_layers = [i for i in range(table.n_layer) if table.layer_experts[i]]
    if mode == "none" or not table.is_moe:
        return _largest_fit(table, budget, kv_layer, forced_cpu=set(), fill=False, whole_experts_only=True)
    if mode != "auto":
        forced = set(moe_layers if mode == "all" else moe_layers[:mode])
        return _largest_fit(table, budget, kv_layer, forced_cpu=forced, fill=False, whole_experts_only=True)
    candidates = [c for k in range(table.n_layer + 1)
                  if (c := _fill(table, budget, kv_layer, k, forced_cpu=set(), fill=True)) is not None]
    if not candidates:
        return _Layout(0, (), 0)
    return min(candidates, key=lambda c: (seconds_per_token(_work(table, c, depth)), -c.n_gpu_layers))


def _largest_fit(table: TensorTable, budget: int, kv_layer: int, *, forced_cpu: set[int], fill: bool,
                 whole_experts_only: bool) -> _Layout:
    """The plan with the fewest leading layers on the CPU whose GPU layers fit with every expert
    not in `forced_cpu` on the GPU (layer offload, or llama.cpp's --n-cpu-moe)."""
    for k in range(table.n_layer + 1):
        layout = _fill(table, budget, kv_layer, k, forced_cpu=forced_cpu, fill=fill)
        if layout is None:
            continue
        kept = {i for i, _ in layout.cpu_parts}
        if not whole_experts_only or kept <= forced_cpu:
            return layout
    return _Layout(0, (), 0)


def _fill(table: TensorTable, budget: int, kv_layer: int, n_cpu_layers: int, *, forced_cpu: set[int],
          fill: bool) -> _Layout | None:
    """The first `n_cpu_layers` layers on the CPU; the others' attention, shared tensors and KV on
    the GPU (None if that does not fit), then their experts by layer from the last one down, then
    (with `fill`) single expert tensors into what is left."""
    n = table.n_layer
    gpu_layers = range(n_cpu_layers, n)
    used = sum(table.layer_hot[i] + kv_layer for i in gpu_layers)
    if used > budget:
        return None
    output = n_cpu_layers == 0 and used + table.output <= budget
    used += table.output if output else 0
    on_cpu: dict[int, set[str]] = {}
    stop = False
    for i in reversed(gpu_layers):
        if not table.layer_experts[i]:
            continue
        if i in forced_cpu or stop or used + table.layer_experts[i] > budget:
            on_cpu[i] = set(PARTS)
            stop = stop or i not in forced_cpu
            continue
        used += table.layer_experts[i]
    if fill:
        for i in sorted(on_cpu, reverse=True):
            for part in PARTS:
                size = table.part_bytes(i, part)
                if i not in forced_cpu and used + size <= budget:
                    used += size
                    on_cpu[i].discard(part)
    cpu_parts = tuple((i, frozenset(p)) for i, p in sorted(on_cpu.items()) if p)
    return _Layout(n - n_cpu_layers + (1 if output else 0), cpu_parts, used)


def _work(table: TensorTable, layout: _Layout, depth: int) -> TokenWork:
    """What one token reads on each device under `layout`, at `depth` tokens of context."""
    geom = table.geometry
    share = geom.n_experts_used / geom.n_experts if geom.n_experts and geom.n_experts_used else 1.0
    n = table.n_layer
    first_gpu = n - min(layout.n_gpu_layers, n)
    cpu_parts = dict(layout.cpu_parts)
    gpu_w = cpu_w = 0.0
    for i in range(n):
        on_gpu = i >= first_gpu
        experts_cpu = sum(table.part_bytes(i, p) for p in cpu_parts.get(i, ())) if on_gpu else table.layer_experts[i]
        experts_gpu = table.layer_experts[i] - experts_cpu
        gpu_w += (table.layer_hot[i] if on_gpu else 0) + experts_gpu * share
        cpu_w += (0 if on_gpu else table.layer_hot[i]) + experts_cpu * share
    output_on_gpu = layout.n_gpu_layers > n
    gpu_w += table.output if output_on_gpu else 0
    cpu_w += 0 if output_on_gpu else table.output
    attention = table.geometry.attention_bytes(depth)
    n_gpu = n - first_gpu
    boundaries = (1 if 0 < n_gpu < n else 0) + (1 if n_gpu and not output_on_gpu else 0)
    return TokenWork(gpu_weight_bytes=gpu_w, cpu_weight_bytes=cpu_w, gpu_attention_bytes=attention * n_gpu,
                     cpu_attention_bytes=attention * (n - n_gpu), transitions=2 * len(cpu_parts) + boundaries,
                     experts_split=bool(cpu_parts))


# ---------------------------------------------------------------------------------------------
# Load options and the one-line explanation


def _overridden_parts(table: TensorTable, layout: _Layout, mode: str | int) -> tuple[tuple[int, frozenset[str]], ...]:
    """The expert tensors to override to the CPU: those of GPU layers kept in CPU RAM; on a CPU-only
    plan, `all` and `N` still name theirs (the overrides are then where the weights are anyway)."""
    if layout.n_gpu_layers or mode in ("auto", "none"):
        return layout.cpu_parts
    moe_layers = [i for i in range(table.n_layer) if table.layer_experts[i]]
    chosen = moe_layers if mode == "all" else moe_layers[:mode]
    return tuple((i, frozenset(PARTS)) for i in chosen)


def _overrides(cpu_parts) -> tuple[TensorOverride, ...]:
    """One CPU override per set of expert parts, naming its layers."""
    by_parts: dict[frozenset[str], list[int]] = {}
    for layer, parts in cpu_parts:
        by_parts.setdefault(parts, []).append(layer)
    out = []
    for parts, layers in sorted(by_parts.items(), key=lambda kv: kv[1]):
        names = "|".join(p for p in ("gate", "up", "down") if p in parts)
        out.append(TensorOverride(rf"^blk\.({'|'.join(map(str, layers))})\.ffn_({names})_exps\.", "CPU"))
    return tuple(out)


def _whole_layers(cpu_parts) -> tuple[int, ...]:
    """The layers all of whose expert tensors are in `cpu_parts`."""
    return tuple(i for i, parts in cpu_parts if len(parts) == len(PARTS))


def _explain(table: TensorTable, layout: _Layout, cpu_parts, mode: str | int, gpu_name: str, gpu_total: int) -> str:
    n = table.n_layer
    if layout.n_gpu_layers == 0:
        cpu_layers = [i for i, _ in cpu_parts]
        what = f", experts of layers {_ranges(cpu_layers)} on CPU (overridden)" if cpu_layers else ""
        return f"CPU only: all {n} layers on CPU{what}"
    head = f"{gpu_name} {layout.gpu_bytes / GiB:.1f}/{gpu_total / GiB:.1f} GiB: "
    if not layout.cpu_parts:
        if layout.n_gpu_layers > n and table.is_moe and mode != "none":
            return head + "everything on GPU"
        shown = "all layers" if layout.n_gpu_layers > n else f"{layout.n_gpu_layers}/{n} layers"
        return head + f"{shown} on GPU (layer offload)"
    on_gpu = "attention+shared on GPU" if layout.n_gpu_layers > n else f"{layout.n_gpu_layers}/{n} layers on GPU"
    whole = _whole_layers(cpu_parts)
    partial = [(i, parts) for i, parts in cpu_parts if len(parts) < len(PARTS)]
    experts = f"experts of layers {_ranges(whole)} on CPU" if whole else "experts of no layer wholly on CPU"
    for i, parts in partial:
        experts += f", {'+'.join(p for p in PARTS if p in parts)} experts of layer {i} on CPU"
    return head + f"{on_gpu}, {experts}"


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


def plan_placement(model_path: str | os.PathLike[str], moe_offload: str = "auto", n_ctx: int | None = None, *,
                   depth: int | None = None, gpu_free: int | None = None, extra_bytes: int = 0) -> Placement:
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
    return plan(table, gpu_free=gpu_free, moe_offload=moe_offload, n_ctx=n_ctx, depth=depth,
                gpu_total=total or gpu_free, gpu_name=name, extra_bytes=extra_bytes)
