"""The composition: from what a user typed (a path or a registry id) to a loaded Engine or
Scheduler, placed on this machine's devices, or to a remote endpoint.

Every front end (run, chat, batch, serve) opens its model here, so model resolution (with the
fit and disk check before any download), registry defaults, the think prefix and the placement
plan are decided in one place.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Sequence

from edgeds.catalog.resolve import ResolvedModel, resolve_model
from edgeds.machine.downloads import check_download
from edgeds.machine.placement import parse_moe_offload, plan_placement
from edgeds.runtime.engine import Engine
from edgeds.runtime.lora import LoraSpec, check_adapter
from edgeds.runtime.params import ModelDefaults
from edgeds.runtime.scheduler import DEFAULT_SEQ_CTX, Scheduler


def fetch_model(spec: str | Path, *, pull: bool | Literal["ask"] = "ask", progress: bool = True) -> ResolvedModel:
    """`catalog.resolve.resolve_model` with this machine's fit and disk check before a download."""
    return resolve_model(spec, pull=pull, progress=progress, check=check_download)


def context_warning(path: Path, n_ctx: int | None) -> str | None:
    """A warning when `n_ctx` is beyond the model's trained context (llama.cpp stretches RoPE
    past it, and the model's output degrades), else None."""
    from edgeds.catalog.gguf import read_gguf

    trained = read_gguf(path).context_length if n_ctx else None
    if not trained or n_ctx <= trained:
        return None
    return (f"edgeds: warning: --n-ctx {n_ctx} is beyond the {trained} tokens {path.name} was trained on; "
            "llama.cpp stretches its position encoding past that and quality drops")


def model_defaults(resolved: ResolvedModel) -> ModelDefaults | None:
    """The registry's generation defaults for a registry model (None for a plain file)."""
    if resolved.entry is None:
        return None
    g = resolved.entry.generation
    return ModelDefaults(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, min_p=g.min_p,
                         repeat_penalty=g.repeat_penalty, max_tokens=g.max_tokens,
                         allow_system=g.allow_system, forces_think=g.forces_think)


def open_engine(
    spec: str | Path,
    *,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    moe_offload: str = "auto",
    kv_tokens: int | None = None,
    pull: bool | Literal["ask"] = "ask",
    progress: bool = True,
    think_prefix: bool = True,
    seq_ctx: int | None = None,
    depth: int | None = None,
    loras: Sequence[LoraSpec] = (),
) -> Engine:
    """Load the model `spec` names, placed on this machine's devices.

    Args:
        spec: a GGUF path, a registry id `id[:QUANT]` or a name added with `edgeds add`.
        n_ctx: the engine's context length (default: the placement plan's: the trained length,
            capped by free RAM).
        moe_offload: auto|all|none|N, see `edgeds.machine.placement`.
        kv_tokens: KV cache tokens the caller will allocate, for the placement plan
            (a scheduler's parallel × seq_ctx); default n_ctx.
        pull: whether a registry model that is not downloaded may be pulled ("ask": on a terminal).
        think_prefix: start R1-family replies inside `<think>` (see `Engine`).
        seq_ctx: the context one conversation gets (a scheduler's), default n_ctx; a warning
            goes to stderr when it is beyond the model's trained context.
        depth: the context depth decoding will reach, for the placement's cost model (default:
            the whole context, as long reasoning traces fill it).
        loras: GGUF LoRA adapters (`--lora FILE[:SCALE]`), checked against the model and applied.

    The engine's `placement` attribute explains the plan in one line.

    Raises:
        ModelNotFound: neither a file nor a (downloaded) registry model.
        DownloadRefused: the model would have to be downloaded and cannot run here.
        UsageError: a bad --moe-offload value.
        ModelLoadError: llama.cpp could not load it.
        EdgedsError: an adapter that does not fit the model.
    """
    parse_moe_offload(moe_offload)  # a typo fails before a download
    resolved = fetch_model(spec, pull=pull, progress=progress)
    if warning := context_warning(resolved.path, seq_ctx or n_ctx):
        print(warning, file=sys.stderr)
    for lora in loras:  # before the model loads: a wrong adapter fails fast
        check_adapter(lora.path, resolved.path)
    # chat and serve plan for traces that fill their context; `run` with a short reply for less
    placement = plan_placement(resolved.path, moe_offload, kv_tokens or n_ctx, depth=depth)
    return Engine(resolved.path, n_ctx=n_ctx or placement.n_ctx, n_threads=n_threads,
                  load_options=placement.load_options, defaults=model_defaults(resolved),
                  placement=placement.explanation, think_prefix=think_prefix, loras=loras)


def open_scheduler(spec: str | Path, *, parallel: int = 4, seq_ctx: int | None = None,
                   n_threads: int | None = None, moe_offload: str = "auto",
                   think_prefix: bool = True, loras: Sequence[LoraSpec] = ()) -> Scheduler:
    """Load the model `spec` names and put a scheduler of `parallel` slots on it."""
    # The engine's own single-sequence context goes unused here: keep it at the minimum.
    engine = open_engine(spec, n_ctx=256, n_threads=n_threads, moe_offload=moe_offload,
                         kv_tokens=parallel * (seq_ctx or DEFAULT_SEQ_CTX), think_prefix=think_prefix,
                         seq_ctx=seq_ctx, loras=loras)
    try:
        return Scheduler(engine, parallel=parallel, seq_ctx=seq_ctx, n_threads=n_threads)
    except BaseException:
        engine.close()
        raise
