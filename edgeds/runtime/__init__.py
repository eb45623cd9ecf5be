"""The runtime: an Engine (one model, one conversation at a time) and a Scheduler (several
conversations decoded together), the chat template, generation parameters and the reasoning
splitter. `Engine` and `GenerationParams` are importable from here; importing the package
alone does not load llama.cpp (the remote client uses the reasoning splitter without it)."""

from __future__ import annotations

__all__ = ["Engine", "GenerationParams", "ModelDefaults"]


def __getattr__(name: str):
    if name == "Engine":
        from edgeds.runtime.engine import Engine

        return Engine
    if name in ("GenerationParams", "ModelDefaults"):
        from edgeds.runtime import params

        return getattr(params, name)
    raise AttributeError(name)
