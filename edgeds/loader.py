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
from edgeds.errors import ModelNotFound, UsageError
from edgeds.machine.downloads import check_download
from edgeds.machine.placement import parse_moe_offload, plan_placement
from edgeds.runtime.engine import Engine
from edgeds.runtime.lora import LoraSpec, check_adapter
from edgeds.runtime.params import ModelDefaults
from edgeds.runtime.scheduler import DEFAULT_SEQ_CTX, Scheduler
from edgeds.runtime.speculative import Speculation


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
    draft: str | None = None,
    draft_max: int | None = None,
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
        draft: speculative decoding: a draft model (GGUF path or registry id), `ngram` (prompt
            lookup) or `auto` (the registry's draft for this model, when it is downloaded and
            fits; else none, with a note on stderr). The output is the same as without it.
        draft_max: tokens drafted per step (default: adaptive).

    The engine's `placement` attribute explains the plan in one line.

    Raises:
        ModelNotFound: neither a file nor a (downloaded) registry model.
        DownloadRefused: the model would have to be downloaded and cannot run here.
        UsageError: a bad --moe-offload value.
        ModelLoadError: llama.cpp could not load it.
        EdgedsError: an adapter that does not fit the model.
    """
    parse_moe_offload(moe_offload)  # a typo fails before a download
    if draft_max is not None and not draft:
        raise UsageError("--draft-max needs --draft (a draft model, ngram or auto)")
    resolved = fetch_model(spec, pull=pull, progress=progress)
    if warning := context_warning(resolved.path, seq_ctx or n_ctx):
        print(warning, file=sys.stderr)
    for lora in loras:  # before the model loads: a wrong adapter fails fast
        check_adapter(lora.path, resolved.path)
    draft_file = draft_path(draft, resolved, pull=pull, progress=progress) if draft else None
    extra = draft_bytes(draft_file, kv_tokens or n_ctx) if draft_file else 0
    if draft == "auto" and draft_file and not fits_beside(resolved.path, kv_tokens or n_ctx, extra):
        print(f"edgeds: --draft auto: {draft_file.name} does not fit beside the model; decoding without a draft",
              file=sys.stderr)
        draft_file, extra = None, 0
    # chat and serve plan for traces that fill their context; `run` with a short reply for less
    placement = plan_placement(resolved.path, moe_offload, kv_tokens or n_ctx, depth=depth, extra_bytes=extra)
    engine = Engine(resolved.path, n_ctx=n_ctx or placement.n_ctx, n_threads=n_threads,
                    load_options=placement.load_options, defaults=model_defaults(resolved),
                    placement=placement.explanation, think_prefix=think_prefix, loras=loras)
    try:
        engine.speculation = open_speculation(engine, draft, draft_file, draft_max)
    except BaseException:
        engine.close()
        raise
    if engine.speculation is not None:
        engine.placement += f"; drafts: {engine.speculation.name}"
    return engine


def draft_path(draft: str, target: ResolvedModel, *, pull: bool | Literal["ask"] = "ask",
               progress: bool = True) -> Path | None:
    """The GGUF `--draft` names: None for `ngram`, and for `auto` where the registry names no
    draft for the model or it is not downloaded (`auto` never downloads; a note says why)."""
    if draft == "ngram":
        return None
    if draft == "auto":
        named = target.entry.draft if target.entry else None
        try:
            if named is None:
                raise ModelNotFound(f"the registry names no draft model for {target.path.name}")
            return resolve_model(named, pull=False).path
        except ModelNotFound as err:
            print(f"edgeds: --draft auto: {err}; decoding without a draft", file=sys.stderr)
            return None
    try:
        return fetch_model(draft, pull=pull, progress=progress).path
    except ModelNotFound as err:
        raise ModelNotFound(f"--draft: {err}") from None


def draft_bytes(path: Path, kv_tokens: int | None) -> int:
    """Memory a draft model takes: its weights, KV cache (for `kv_tokens`, default the largest
    default context) and compute buffers."""
    from edgeds.catalog.gguf import read_gguf
    from edgeds.machine.fit import Footprint
    from edgeds.machine.memory import DEFAULT_MAX_CTX

    estimate = Footprint.from_gguf(read_gguf(path)).estimate(kv_tokens or DEFAULT_MAX_CTX)
    return estimate.total - estimate.overhead


def fits_beside(target: Path, kv_tokens: int | None, extra: int) -> bool:
    """Whether the model (at `kv_tokens`) and `extra` bytes fit in free RAM and GPU memory."""
    from edgeds.catalog.gguf import read_gguf
    from edgeds.llamacpp import devices
    from edgeds.machine.fit import Footprint
    from edgeds.machine.hardware import memory
    from edgeds.machine.memory import DEFAULT_MAX_CTX

    gpu_free = sum(d.free_bytes for d in devices.devices() if d.kind in ("gpu", "igpu"))
    need = Footprint.from_gguf(read_gguf(target)).estimate(kv_tokens or DEFAULT_MAX_CTX).total + extra
    return need <= memory()[1] + gpu_free


def open_speculation(engine: Engine, draft: str | None, draft_file: Path | None,
                     draft_max: int | None) -> Speculation | None:
    """The engine's drafter: n-gram lookup, or the draft GGUF checked against the engine's
    vocabulary and loaded on the GPU where there is one (the plan counted it).

    Raises:
        UsageError: the draft's vocabulary or special tokens differ from the model's.
    """
    from edgeds.llamacpp.backend import gpu_offload_supported
    from edgeds.llamacpp.binding import LoadOptions, Model
    from edgeds.runtime.speculative import DraftModel, NgramDrafter, check_compatible

    if draft == "ngram":
        return Speculation(NgramDrafter(), draft_max)
    if draft_file is None:
        return None
    model = Model(draft_file, LoadOptions(n_gpu_layers=-1 if gpu_offload_supported() else 0))
    try:
        check_compatible(engine.model, model)
        return Speculation(DraftModel(model, target_vocab=engine.model.n_vocab, seq_ctx=engine.n_ctx,
                                      n_threads=engine.n_threads), draft_max)
    except BaseException:
        model.close()
        raise


def open_scheduler(spec: str | Path, *, parallel: int = 4, seq_ctx: int | None = None,
                   n_threads: int | None = None, moe_offload: str = "auto",
                   think_prefix: bool = True, loras: Sequence[LoraSpec] = (), draft: str | None = None,
                   draft_max: int | None = None) -> Scheduler:
    """Load the model `spec` names and put a scheduler of `parallel` slots on it (`loras`,
    `draft`, `draft_max`: see `open_engine`)."""
    # The engine's own single-sequence context goes unused here: keep it at the minimum.
    engine = open_engine(spec, n_ctx=256, n_threads=n_threads, moe_offload=moe_offload,
                         kv_tokens=parallel * (seq_ctx or DEFAULT_SEQ_CTX), think_prefix=think_prefix,
                         seq_ctx=seq_ctx, loras=loras, draft=draft, draft_max=draft_max)
    try:
        return Scheduler(engine, parallel=parallel, seq_ctx=seq_ctx, n_threads=n_threads)
    except BaseException:
        engine.close()
        raise
