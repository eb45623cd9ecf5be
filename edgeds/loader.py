"""The composition: from what a user typed (a path or a registry id) to a loaded Engine or
Scheduler, placed on this machine's devices, or to a remote endpoint.

Every front end (run, chat, batch, serve) opens its model here, so model resolution,
registry defaults and the placement plan are decided in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from edgeds.catalog.resolve import resolve_model
from edgeds.machine.placement import parse_moe_offload, plan_placement
from edgeds.runtime.engine import Engine
from edgeds.runtime.params import ModelDefaults
from edgeds.runtime.scheduler import DEFAULT_SEQ_CTX, Scheduler


def open_engine(
    spec: str | Path,
    *,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    moe_offload: str = "auto",
    kv_tokens: int | None = None,
    pull: bool | Literal["ask"] = "ask",
    progress: bool = True,
) -> Engine:
    """Load the model `spec` names, placed on this machine's devices.

    Args:
        spec: a GGUF path or a registry id `id[:QUANT]`.
        n_ctx: the engine's context length (default: the placement plan's: the trained length,
            capped by free RAM).
        moe_offload: auto|all|none|N, see `edgeds.machine.placement`.
        kv_tokens: KV cache tokens the caller will allocate, for the placement plan
            (a scheduler's parallel × seq_ctx); default n_ctx.
        pull: whether a registry model that is not downloaded may be pulled ("ask": on a terminal).

    The engine's `placement` attribute explains the plan in one line.

    Raises:
        ModelNotFound: neither a file nor a (downloaded) registry model.
        UsageError: a bad --moe-offload value.
        ModelLoadError: llama.cpp could not load it.
    """
    parse_moe_offload(moe_offload)  # a typo fails before a download
    resolved = resolve_model(spec, pull=pull, progress=progress)
    placement = plan_placement(resolved.path, moe_offload, kv_tokens or n_ctx)
    defaults = None
    if resolved.entry is not None:
        g = resolved.entry.generation
        defaults = ModelDefaults(temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens,
                                 allow_system=g.allow_system)
    return Engine(resolved.path, n_ctx=n_ctx or placement.n_ctx, n_threads=n_threads,
                  load_options=placement.load_options, defaults=defaults, placement=placement.explanation)


def open_scheduler(spec: str | Path, *, parallel: int = 4, seq_ctx: int | None = None,
                   n_threads: int | None = None, moe_offload: str = "auto") -> Scheduler:
    """Load the model `spec` names and put a scheduler of `parallel` slots on it."""
    # The engine's own single-sequence context goes unused here: keep it at the minimum.
    engine = open_engine(spec, n_ctx=256, n_threads=n_threads, moe_offload=moe_offload,
                         kv_tokens=parallel * (seq_ctx or DEFAULT_SEQ_CTX))
    try:
        return Scheduler(engine, parallel=parallel, seq_ctx=seq_ctx, n_threads=n_threads)
    except BaseException:
        engine.close()
        raise
