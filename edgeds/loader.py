"""From what a user typed (a path or a registry id) to a loaded Engine.

Every front end (run, chat, batch, serve) opens its model here, so model resolution,
registry defaults and the placement plan are decided in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from edgeds.runtime import Engine
from edgeds.runtime.params import ModelDefaults


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
        n_ctx: the engine's context length (default: trained length, capped by free RAM).
        moe_offload: auto|all|none|N, see `edgeds.machine.placement`.
        kv_tokens: KV cache tokens the caller will allocate, for the placement plan
            (a scheduler's parallel × seq_ctx); default n_ctx, or the trained length.
        pull: whether a registry model that is not downloaded may be pulled ("ask": on a terminal).

    The engine's `placement` attribute explains the plan in one line.

    Raises:
        ModelNotFound: neither a file nor a (downloaded) registry model.
        UsageError: a bad --moe-offload value.
        ModelLoadError: llama.cpp could not load it.
    """
    from edgeds.catalog.resolve import resolve_model
    from edgeds.machine.placement import parse_moe_offload, plan_placement

    parse_moe_offload(moe_offload)  # a typo fails before a download
    resolved = resolve_model(spec, pull=pull, progress=progress)
    placement = plan_placement(resolved.path, moe_offload, kv_tokens or n_ctx)
    defaults = None
    if resolved.entry is not None:
        g = resolved.entry.generation
        defaults = ModelDefaults(temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens,
                                 allow_system=g.allow_system)
    return Engine(resolved.path, n_ctx=n_ctx, n_threads=n_threads, load_options=placement.load_options,
                  defaults=defaults, placement=placement.explanation)
